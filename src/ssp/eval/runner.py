"""`ssp eval`: generate, judge, aggregate; resumable.

Over 500 lines: one run's settings, resumable store, generate-judge-aggregate loop and folder lock.

Output folder:
* ``eval_config.json``  the settings of the run (written first; a later run into the same folder must
  agree on everything that changes generations, or it stops and says what differs);
* ``generations.jsonl`` one JSON object per (suite, attack, item), appended as soon as its batch is
  judged and flushed to disk: a rerun skips every item already there (resume);
* ``results.json``      metrics per (suite, attack), see docs/evaluation.md;
* ``report.html``       one self-contained page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field

from ssp.config import ModelConfig, SamplingConfig
from ssp.eval.attacks import Attack, AttackEnv, available_attacks, build_attack
from ssp.eval.benchmarks import BenchmarkItem, BenchmarkSpec, Suite, load_benchmarks, parse_benchmark_spec
from ssp.records import read_log

log = logging.getLogger(__name__)

CONFIG_FILE = "eval_config.json"
GENERATIONS_FILE = "generations.jsonl"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"


class EvalError(RuntimeError):
    """A problem that stops an evaluation, with what to do about it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttackOptions(_Strict):
    self_samples: int = Field(4, ge=1, description="K: attacker samples per goal for `self`")
    strategy_hints: bool = Field(True, description="`self`: a strategy hint per sample, as in training")
    accept_truncated_attacks: bool = Field(False, description="accept attacker outputs cut off by the token limit")
    templates: str | None = Field(None, description="template file (default: the packaged templates)")
    template_names: list[str] | None = Field(None, description="use only these templates")
    pair_streams: int = Field(1, ge=1)
    pair_rounds: int = Field(3, ge=1)
    pair_history: int = Field(2, ge=0, description="earlier attempts the PAIR attacker sees")


class EvalSettings(_Strict):
    model: ModelConfig = ModelConfig()
    adapter: str | None = None
    model_seed: int = Field(0, description="seed of the base model (matters for `tiny` only) and of sampling")
    attacker_model: ModelConfig | None = None
    attacker_adapter: str | None = None
    benchmarks: list[str]
    benchmark_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    attacks: list[str] = ["direct"]
    attack: AttackOptions = AttackOptions()
    judge: str = "heuristic"
    judge_options: dict[str, Any] = Field(default_factory=dict)
    defense: str = "none"
    defense_options: dict[str, Any] = Field(default_factory=dict)
    defender: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=128)
    attacker: SamplingConfig = SamplingConfig(temperature=1.0, max_new_tokens=80)
    limit: int | None = Field(None, ge=1)
    seed: int = Field(0, description="item selection under --limit, strategy hints, sampling")
    batch_size: int = Field(64, ge=1)
    backend: Literal["auto", "native", "hf"] = Field("auto", description="rollout engine, as rollout.backend")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="native engine precision")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    diversity_embeddings: bool = True


def generation_fingerprint(s: EvalSettings) -> dict[str, Any]:
    """Everything that changes what a generation record contains (not which items or attacks are run)."""
    d = s.model_dump(mode="json")
    for key in ("benchmarks", "attacks", "limit", "batch_size", "device", "threads", "diversity_embeddings"):
        d.pop(key, None)
    return d


def _settings_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _settings_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def record_key(suite: str, attack: str, item_id: str) -> str:
    return json.dumps([suite, attack, item_id], ensure_ascii=False)


# --------------------------------------------------------------------------------------- the store


class GenerationStore:
    """generations.jsonl: read completed records, append new ones durably."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        good: list[str] = []
        bad = 0
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = record_key(rec["suite"], rec["attack"], rec["item_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1  # a record cut off by a crash: redone
                continue
            self.records[key] = rec
            good.append(line)
        if bad:
            log.warning("%s: %d unreadable line(s) dropped (interrupted write); those items are redone", self.path, bad)
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            os.replace(tmp, self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for rec in records:
            self.records[record_key(rec["suite"], rec["attack"], rec["item_id"])] = rec


# --------------------------------------------------------------------------------------- the runner


def _find_adapter(path: str) -> tuple[Path, Path | None]:
    """An adapter folder, a checkpoint folder (…/step-N) or a run folder (latest checkpoint) -> the peft
    folder and the config.yaml that belongs to it (if any)."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file():
        cfg = p.parent / "config.yaml" if p.name == "weights" else None
        return p, cfg if cfg and cfg.is_file() else None
    if (p / "weights" / "adapter_config.json").is_file():
        return p / "weights", (p / "config.yaml") if (p / "config.yaml").is_file() else None
    if (p / "checkpoints").is_dir():
        steps = sorted(d for d in (p / "checkpoints").iterdir() if (d / "weights" / "adapter_config.json").is_file())
        if steps:
            return _find_adapter(str(steps[-1]))
    raise EvalError(
        f"--adapter {path}: no peft adapter (adapter_config.json) in it, its weights/ folder or its latest checkpoint"
    )


def resolve_adapter(path: str | None) -> tuple[str | None, Path | None]:
    if path is None:
        return None, None
    folder, cfg = _find_adapter(path)
    return str(folder), cfg


def load_model(cfg: ModelConfig, adapter: str | None, seed: int, device: str):
    """(model, tokenizer) in eval mode on the device; a LoRA adapter is loaded with peft."""
    from ssp.models.loader import load_base_model, load_policy, resolve_device

    if adapter:
        lora_cfg = cfg.model_copy(update={"finetune": "lora"})
        model, tokenizer = load_policy(lora_cfg, seed=seed, adapter=adapter)
        model = model.merge_and_unload()  # same function, plain layers: faster generation
    else:
        model, tokenizer = load_base_model(cfg, seed=seed)
    model.to(resolve_device(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def chunk_items(prompts_per_item: int, batch_size: int) -> int:
    """Items per generation round: full batches where possible (a half-empty last batch costs as much as a full
    one on CPU), about two to four batches of prompts; at least one item."""
    for k in range(1, 4 * batch_size + 1):
        if k * prompts_per_item > 4 * batch_size:
            break
        if (k * prompts_per_item) % batch_size == 0 and k * prompts_per_item >= 2 * batch_size:
            return k
    return max(1, (2 * batch_size) // prompts_per_item)


def _chunks(items: list[BenchmarkItem], size: int) -> list[list[BenchmarkItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Evaluation:
    """One evaluation into one output folder. `run()` generates what is missing, then aggregates."""

    def __init__(
        self,
        settings: EvalSettings,
        output: str | Path,
        *,
        progress: bool = True,
        overwrite: bool = False,
        log_fn: Callable[[str], None] | None = None,
    ):
        self.s = settings
        self.out = Path(output)
        self.progress = progress
        self.overwrite = overwrite
        self.log = log_fn or (lambda msg: log.info(msg))
        for a in settings.attacks:
            if a not in available_attacks():
                raise EvalError(f"--attack: unknown attack {a!r}; available: {', '.join(available_attacks())}")
        self.specs: list[BenchmarkSpec] = [
            parse_benchmark_spec(b, settings.benchmark_options) for b in settings.benchmarks
        ]
        self.suites: list[Suite] = load_benchmarks(self.specs, settings.limit, settings.seed)
        self.attack_objs: dict[str, Attack] = {
            a: build_attack(
                a,
                self_samples=settings.attack.self_samples,
                strategy_hints=settings.attack.strategy_hints,
                accept_truncated=settings.attack.accept_truncated_attacks,
                templates=settings.attack.templates,
                template_names=settings.attack.template_names,
                pair_streams=settings.attack.pair_streams,
                pair_rounds=settings.attack.pair_rounds,
                pair_history=settings.attack.pair_history,
                attacker_name=(settings.attacker_model.name_or_path if settings.attacker_model else "model under test"),
            )
            for a in dict.fromkeys(settings.attacks)
        }
        self._env: AttackEnv | None = None

    # -- setup
    def _prepare_folder(self) -> GenerationStore:
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_path = self.out / CONFIG_FILE
        gen_path = self.out / GENERATIONS_FILE
        current = generation_fingerprint(self.s)
        if self.overwrite:
            for name in (CONFIG_FILE, GENERATIONS_FILE, RESULTS_FILE, REPORT_FILE):
                (self.out / name).unlink(missing_ok=True)
        elif cfg_path.exists():
            previous = json.loads(cfg_path.read_text(encoding="utf-8")).get("fingerprint", {})
            diff = _settings_diff(previous, current)
            if diff and gen_path.exists() and gen_path.stat().st_size > 0:
                raise EvalError(
                    f"{self.out} holds generations made with other settings:\n  "
                    + "\n  ".join(diff)
                    + "\nUse another --output, or --overwrite to discard them."
                )
        elif gen_path.exists() and gen_path.stat().st_size > 0:
            raise EvalError(f"{gen_path} exists without {CONFIG_FILE}; use another --output or --overwrite")
        digest = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()
        cfg_path.write_text(
            json.dumps(
                {
                    "settings": self.s.model_dump(mode="json"),
                    "fingerprint": current,
                    "fingerprint_sha256": digest,
                    "updated": _now(),
                },
                indent=2,
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        return GenerationStore(gen_path)

    def _setup_models(self) -> AttackEnv:
        if self._env is not None:
            return self._env
        import torch

        from ssp.eval.defenses import AttackerModel, DefenseContext, TargetModel, build_defense
        from ssp.judges.registry import build_judge
        from ssp.rollout.engines import build_rollout_engine

        s = self.s
        t0 = time.perf_counter()
        if s.threads:
            torch.set_num_threads(s.threads)
        torch.manual_seed(s.model_seed)
        model, tok = load_model(s.model, s.adapter, s.model_seed, s.device)
        engine = build_rollout_engine(s.backend, model, tok, s.model.max_prompt_tokens, s.batch_size, dtype=s.dtype)
        name = s.model.name_or_path + (f" + {s.adapter}" if s.adapter else "")
        self.log(f"model {name} loaded in {time.perf_counter() - t0:.1f}s")
        judge = build_judge(s.judge, s.judge_options)
        target = TargetModel(engine, s.defender, name)
        defense = build_defense(s.defense, DefenseContext(target, judge, s.seed), s.defense_options)
        attacker = AttackerModel(engine, s.attacker, name)
        pair_attacker = attacker
        if s.attacker_model is not None and "pair" in s.attacks:
            am, at = load_model(s.attacker_model, s.attacker_adapter, s.model_seed, s.device)
            aname = s.attacker_model.name_or_path + (f" + {s.attacker_adapter}" if s.attacker_adapter else "")
            pair_attacker = AttackerModel(
                build_rollout_engine(
                    s.backend, am, at, s.attacker_model.max_prompt_tokens, s.batch_size, dtype=s.dtype
                ),
                s.attacker,
                aname,
            )
        self._env = AttackEnv(defense, judge, attacker, pair_attacker, s.seed)
        return self._env

    def _work(self, store: GenerationStore) -> list[tuple[Suite, str, list[BenchmarkItem]]]:
        work = []
        for suite in self.suites:
            for attack in self.attack_objs:
                if suite.kind == "benign" and attack != "direct":
                    continue
                todo = [it for it in suite.items if record_key(suite.name, attack, it.id) not in store]
                work.append((suite, attack, todo))
        return work

    def _record(self, item: BenchmarkItem, attack: str, samples, elapsed: float) -> dict[str, Any]:
        from ssp.eval.results import item_outcome

        sample_dicts = [x.to_dict() for x in samples]
        return {
            "suite": item.suite,
            "benchmark": item.benchmark,
            "split": item.split,
            "kind": item.kind,
            "attack": attack,
            "item_id": item.id,
            "category": item.category,
            "goal": item.goal,
            "item_prompt": item.prompt,
            "samples": sample_dicts,
            "outcome": item_outcome(sample_dicts),
            "time_s": round(elapsed, 3),
            "created": _now(),
        }

    # -- run
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.out / ".lock"):
            return self._run()

    def _run(self) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        store = self._prepare_folder()
        work = self._work(store)
        total = sum(len(todo) for _, _, todo in work)
        done_before = sum(len(s.items) for s, _, _ in work) - total
        if done_before:
            self.log(f"resuming: {done_before} item(s) already in {GENERATIONS_FILE}, {total} to go")
        if total:
            env = self._setup_models()
            with _Progress(self.progress) as bar:
                for suite, attack, todo in work:
                    if not todo:
                        continue
                    obj = self.attack_objs[attack]
                    task = bar.add(f"{suite.name} × {attack}", len(suite.items), len(suite.items) - len(todo))
                    size = chunk_items(obj.prompts_per_item(), self.s.batch_size)
                    for chunk in _chunks(todo, size):
                        torch.manual_seed(
                            int(
                                hashlib.sha256(
                                    f"{self.s.seed}:{suite.name}:{attack}:{chunk[0].id}".encode()
                                ).hexdigest()[:8],
                                16,
                            )
                        )
                        t0 = time.perf_counter()
                        per_item = obj.run(chunk, env)
                        elapsed = (time.perf_counter() - t0) / len(chunk)
                        store.append([self._record(it, attack, smp, elapsed) for it, smp in zip(chunk, per_item)])
                        bar.advance(task, len(chunk))
        generation_s = time.perf_counter() - started
        results = self.aggregate(store)
        results["run"] = {
            "wall_time_s": round(time.perf_counter() - started, 2),
            "generation_time_s": round(generation_s, 2),
            "items_generated": total,
            "items_resumed": done_before,
            "item_time_s_total": round(sum(e.get("time_s", 0.0) for e in results["results"]), 2),
            "finished": _now(),
        }
        return results

    def aggregate(self, store: GenerationStore) -> dict[str, Any]:
        from ssp.eval.results import build_results

        suites = [{**s.describe(), "item_ids": [it.id for it in s.items]} for s in self.suites]
        budgets = {a: obj.budget() for a, obj in self.attack_objs.items()}
        results = build_results(
            store.records.values(), suites, budgets, self.settings_summary(), embed=self.s.diversity_embeddings
        )
        return results

    def settings_summary(self) -> dict[str, Any]:
        import ssp
        from ssp.eval.defenses import DefenseContext, TargetModel, build_defense
        from ssp.judges.base import judge_settings as js
        from ssp.judges.registry import build_judge

        s = self.s
        if self._env is not None:
            judge, defense = self._env.judge, self._env.defense
        else:  # everything resumed: the same objects, built without a model (nothing is generated)
            judge = build_judge(s.judge, s.judge_options)
            defense = build_defense(
                s.defense, DefenseContext(TargetModel(None, s.defender), judge, s.seed), s.defense_options
            )
        judge_settings, defense_settings = js(judge), defense.settings()
        return {
            "model": s.model.model_dump(mode="json"),
            "adapter": s.adapter,
            "attacker_model": s.attacker_model.model_dump(mode="json") if s.attacker_model else None,
            "attacker_adapter": s.attacker_adapter,
            "judge": judge_settings,
            "defense": defense_settings,
            "defender_sampling": s.defender.model_dump(mode="json"),
            "attacker_sampling": s.attacker.model_dump(mode="json"),
            "attacks": {a: obj.budget() for a, obj in self.attack_objs.items()},
            "benchmarks": [su.describe() for su in self.suites],
            "limit": s.limit,
            "seed": s.seed,
            "model_seed": s.model_seed,
            "device": s.device,
            "ssp_version": ssp.__version__,
            "python": platform.python_version(),
        }


def write_outputs(results: dict[str, Any], out: Path, report: bool = True) -> None:
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    os.replace(tmp, out / RESULTS_FILE)
    if report:
        from ssp.eval.report import build_eval_report

        html = build_eval_report(results, read_log(out / GENERATIONS_FILE))
        (out / REPORT_FILE).write_text(html, encoding="utf-8")


def run_eval(
    settings: EvalSettings,
    output: str | Path,
    *,
    progress: bool = True,
    overwrite: bool = False,
    report: bool = True,
    log_fn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    ev = Evaluation(settings, output, progress=progress, overwrite=overwrite, log_fn=log_fn)
    results = ev.run()
    write_outputs(results, Path(output), report=report)
    return results


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """One `ssp eval` per output folder at a time (two writers would interleave generations.jsonl).

    filelock: an OS lock (flock on POSIX, msvcrt on Windows) that the OS drops when the process dies."""
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise EvalError(
            f"another `ssp eval` is writing to {path.parent}; wait for it or use another --output"
        ) from None
    try:
        yield
    finally:
        lock.release()


class _Progress:
    """rich progress bars, one per (suite, attack); a no-op when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def add(self, description: str, total: int, completed: int) -> Any:
        return self._p.add_task(description, total=total, completed=completed) if self._p else None

    def advance(self, task: Any, n: int) -> None:
        if self._p is not None:
            self._p.advance(task, n)
