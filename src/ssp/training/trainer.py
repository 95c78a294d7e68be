"""The SSP training loop: play a step, update the policy, replay and admit, log, checkpoint, resume."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ssp.config import SSPConfig, dump_config
from ssp.game.play import SelfPlayGame
from ssp.game.prompts import (
    REFLECT_RATIONALE_CHARS,
    attacker_request,
    defender_request,
    load_strategy_hints,
    reflective_request,
)
from ssp.game.seeds import load_benign_pool, load_borderline_seeds, load_seeds
from ssp.judges.registry import build_judge
from ssp.models.loader import load_policy, resolve_device
from ssp.parallel import broadcast_parameters, full_tensor, zero3_gathered
from ssp.replay.pool import ExperiencePool, PoolEntry
from ssp.rl.grpo import grpo_update, step_totals, trainable
from ssp.rollout.engines import engine_for_run, resolve_backend
from ssp.training import checkpoint as ckpt
from ssp.training import tracking
from ssp.training.distributed import (
    Ranks,
    ShardedEngine,
    ShardedJudge,
    enable_sharding_on_cpu,
    generation_context,
    keep_later_models_whole,
)

log = logging.getLogger(__name__)

POOL_FILE = "pool.sqlite"
METRICS_FILE = "metrics.jsonl"
EXCHANGES_FILE = "exchanges.jsonl"
SUMMARY_FILE = "summary.json"
MIN_FREE_BYTES = 2 << 30  # a LoRA checkpoint is small, a full one is model-sized; refuse to start below 2 GiB


class TrainingError(RuntimeError):
    """Training stopped for a stated reason (bad output folder, repeated non-finite updates, ...)."""


def _check_output_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"  # one per process: ranks check the same folder at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"output folder {run_dir} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise TrainingError(
            f"output folder {run_dir}: only {free / 2**30:.2f} GiB free, need at least "
            f"{MIN_FREE_BYTES / 2**30:.0f} GiB for checkpoints"
        )


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be played again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


class _LongestShots(random.Random):
    """Worst case for `reflective_request`: it always gets the longest exemplars."""

    def sample(self, population, k, **kwargs):
        return sorted(population, key=lambda qa: len(qa[0]) + len(qa[1]), reverse=True)[:k]

    def shuffle(self, x, *args, **kwargs):
        pass


class Trainer:
    def __init__(self, cfg: SSPConfig, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress

    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        cfg = self.cfg
        _check_output_dir(self.run_dir)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        device = resolve_device(cfg.run.device)
        self.accelerator = Accelerator(cpu=device.type == "cpu", **tracking.accelerator_kwargs(cfg, self.run_dir))
        sharded = enable_sharding_on_cpu(self.accelerator) or self.accelerator.distributed_type in (
            DistributedType.FSDP,
            DistributedType.DEEPSPEED,
        )
        self.ranks = Ranks(self.accelerator)
        self.device = self.accelerator.device
        # The game RNG is the same on every rank (all ranks play the same global step); the torch RNG
        # (sampling) differs per rank so that sharded rollouts are independent.
        torch.manual_seed(cfg.run.seed + self.ranks.rank)
        self.rng = random.Random(cfg.run.seed)

        self.harmful = load_seeds(cfg.game.harmful_seeds, "harmful", cfg.game.harmful_column)
        self.benign = load_benign_pool(cfg.game) if cfg.game.benign_per_step else []
        self.judge = build_judge(cfg.judge.name, cfg.judge.options)
        embedder = None
        if cfg.game.intent_gate:
            from ssp.judges.embedder import TextEmbedder

            embedder = TextEmbedder.shared()

        model, self.tokenizer = load_policy(cfg.model, seed=cfg.run.seed)
        if cfg.model.init_from:  # before the KL reference is copied (full fine-tuning): the start is the reference
            self._init_from(model, cfg.model.init_from)
        model.to(self.device)
        self.reference = None
        if cfg.model.finetune == "full" and cfg.rl.kl_coef > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        if sharded:  # FSDP shards what each rank holds, and LoRA's init drew from the per-rank RNG
            broadcast_parameters(model)
        latest = ckpt.latest_checkpoint(self.run_dir) if self.resume else None
        if latest is not None:  # into the plain model: `prepare` then shards it under FSDP
            ckpt.load_weights(model, latest)
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.rl.learning_rate, weight_decay=cfg.rl.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # FSDP replaced them with shards
        keep_later_models_whole(self.accelerator)
        self.policy = self.accelerator.unwrap_model(self.model)  # generation and saving use the bare module
        self.engine = engine_for_run(cfg, self.policy, self.tokenizer)
        engine, judge = self.engine, self.judge
        # `generate` needs the sharded policy made whole; the native engine gathers its own weight copy instead.
        hf = resolve_backend(cfg.rollout.backend, self.policy) == "hf"  # `auto` may mean hf too
        whole = generation_context(self.accelerator, self.model) if hf else None
        if self.ranks.world > 1 or whole is not None:
            engine, judge = ShardedEngine(engine, self.ranks, whole), ShardedJudge(judge, self.ranks)
        borderline = load_borderline_seeds(cfg.game) if self.benign and cfg.game.borderline_share is not None else []
        self.game = SelfPlayGame(
            cfg, engine, judge, self.harmful, self.benign, load_strategy_hints(), embedder, borderline
        )
        self._check_prompt_budget()

        self.start_step = 0
        pool_path = self.run_dir / POOL_FILE
        if self.resume and latest is None:
            log.warning("--resume: no complete checkpoint in %s; starting from step 0", self.run_dir)
        self.pool: ExperiencePool | None = None  # the experience pool lives on rank 0 only
        if latest is not None:
            ckpt.optimizer_from_files(self.optimizer, latest, self.policy)
            ckpt.rng_from_files(self.rng, latest, self.ranks.rank)
            self.start_step = json.loads((latest / "state.json").read_text())["step"]
            if self.ranks.is_main:
                self.pool = ExperiencePool.restore(latest / POOL_FILE, pool_path, cfg.replay)
                for name in (METRICS_FILE, EXCHANGES_FILE):
                    _truncate_jsonl(self.run_dir / name, self.start_step)
            log.info("resumed from %s (step %d)", latest, self.start_step)
        elif self.ranks.is_main:
            # A fresh start (or a resume with no complete checkpoint): nothing earlier is kept.
            for name in (METRICS_FILE, EXCHANGES_FILE, SUMMARY_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
            if not self.resume:
                shutil.rmtree(self.run_dir / ckpt.CHECKPOINT_DIR, ignore_errors=True)
            ExperiencePool.delete_files(pool_path)
            self.pool = ExperiencePool(pool_path, cfg.replay)
        if self.ranks.is_main:
            dump_config(cfg, self.run_dir / "config.yaml")
        tracking.start(self.accelerator, cfg, self.run_dir, self.start_step)
        self.accelerator.wait_for_everyone()

    @property
    def _main_pool(self) -> ExperiencePool:
        """The experience pool, for code that runs on rank 0 (the other ranks hold none)."""
        assert self.pool is not None, "the experience pool lives on rank 0 only"
        return self.pool

    def _init_from(self, model, source: str) -> None:
        """model.init_from: start from another run's weights (e.g. `ssp warmstart`), whose model settings must match."""
        cfg = self.cfg.model
        try:
            folder = ckpt.find_checkpoint(Path(source))
        except ValueError as e:
            raise TrainingError(f"model.init_from: {e}") from None
        saved = (yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}).get("model", {})
        keys = ("name_or_path", "finetune", "lora") if cfg.finetune == "lora" else ("name_or_path", "finetune")
        current = cfg.model_dump(mode="json")
        differ = [f"{k}: {saved.get(k)!r} there, {current[k]!r} here" for k in keys if saved.get(k) != current[k]]
        if differ:
            raise TrainingError(
                f"model.init_from={cfg.init_from}: {folder} was trained with other model settings ("
                + "; ".join(differ)
                + ")"
            )
        ckpt.load_weights(model, folder)
        log.info("starting from the weights of %s", folder)

    def _check_prompt_budget(self) -> None:
        """Refuse at setup a prompt limit that some request cannot meet, rather than dying at a later step."""
        cfg = self.cfg
        limit = cfg.model.max_prompt_tokens
        new_tokens = max(cfg.rollout.attacker.max_new_tokens, cfg.rollout.defender.max_new_tokens)
        positions = getattr(self.policy.config, "max_position_embeddings", None)
        if positions is not None and limit + new_tokens > positions:
            raise TrainingError(
                f"model.max_prompt_tokens={limit} + max_new_tokens={new_tokens} exceeds the model's "
                f"{positions} positions; lower model.max_prompt_tokens or max_new_tokens"
            )
        goal = max((s.text for s in self.harmful), key=len)
        hints = self.game.hints if cfg.game.strategy_hints else []
        probes = [defender_request(goal)]
        if cfg.game.attacker == "self":
            probes.append(attacker_request(goal, max(hints, key=lambda h: len(h.text)) if hints else None))
        if cfg.replay.mode != "none" and cfg.replay.reflect:
            longest_rationale = ("judge rationale " * REFLECT_RATIONALE_CHARS)[:REFLECT_RATIONALE_CHARS]
            probes.append(reflective_request("x", goal, longest_rationale, _LongestShots()))
        try:
            for request in probes:
                self.engine.encoder.encode(request)
        except ValueError as e:
            raise TrainingError(
                f"{e}; raise model.max_prompt_tokens (or set replay.reflect=false: the reflective "
                "replay context is the longest prompt)"
            ) from None

    def _step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        ranks = self.ranks
        t_step = time.perf_counter()
        # Derived per step, not drawn from the game RNG: only rank 0 selects and logs.
        side_rng = random.Random(cfg.run.seed * 1_000_003 + step)
        entries: list[PoolEntry] = []
        if ranks.is_main and cfg.replay.mode != "none":
            entries = self._main_pool.select(cfg.replay.per_step, side_rng)
        entries = ranks.broadcast(entries)
        result = self.game.play(step, entries, self.rng)

        t0 = time.perf_counter()
        samples = trainable(result.samples)  # identical on every rank; each trains on its shard
        stats = grpo_update(
            self.model,
            self.optimizer,
            ranks.shard(samples),
            cfg.rl,
            self.tokenizer.pad_token_id,
            reference_model=self.reference,
            backward=self._backward,
            clip_grad=lambda: self.accelerator.clip_grad_norm_(self.params, cfg.rl.max_grad_norm),
            totals=step_totals(
                samples,
                cfg.rl.micro_batch_size,
                ranks.world,
                completion_budget=max(cfg.rollout.attacker.max_new_tokens, cfg.rollout.defender.max_new_tokens),
            ),
            loss_scale=float(ranks.world),
            min_micro_batches=ranks.micro_batches_needed(len(samples), cfg.rl.micro_batch_size),
            filler=samples[0] if samples else None,
        )
        self.engine.refresh_weights()
        result.timings["update"] = time.perf_counter() - t0
        losses = ranks.gather_values((stats.loss, stats.kl))
        stats.loss, stats.kl = sum(x[0] for x in losses), sum(x[1] for x in losses)
        if not samples:
            stats.skipped = True

        t0 = time.perf_counter()
        admitted = 0
        pool_stats: dict[str, Any] = {}
        if ranks.is_main:
            pool = self._main_pool
            admitted = pool.admit(result.candidates, step)
            if result.replay_rewards:
                pool.update(result.replay_rewards, step)
            pool_stats = pool.stats()
        result.timings["replay"] = time.perf_counter() - t0

        total = time.perf_counter() - t_step
        gen_time = result.timings["attacker_generation"] + result.timings["defender_generation"]
        row: dict[str, Any] = {"step": step, **{k: _finite(v) for k, v in result.metrics.items()}}
        row.update(
            {
                "loss": _finite(stats.loss),
                "kl": _finite(stats.kl),
                "grad_norm": _finite(stats.grad_norm),
                "update_skipped": stats.skipped,
                "update_epochs": stats.epochs,
                "update_tokens": stats.tokens,
                "nonfinite": not (math.isfinite(stats.loss) and math.isfinite(stats.grad_norm)),
                "pool/admitted": admitted,
                "pool/replayed": len(result.replay_rewards),
                **{f"pool/{k}": v for k, v in pool_stats.items()},
                **{f"time/{k}": round(v, 3) for k, v in result.timings.items()},
                "time/step": round(total, 3),
                "generated_tokens": result.generated_tokens,
                "tokens_per_s": round(result.generated_tokens / gen_time, 2) if gen_time > 0 else None,
            }
        )
        if not ranks.is_main:
            return row
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        tracking.log(self.accelerator, row, step)
        if cfg.run.log_exchanges:
            logged = (
                result.exchanges
                if len(result.exchanges) <= cfg.run.log_exchanges
                else side_rng.sample(result.exchanges, cfg.run.log_exchanges)
            )
            with open(self.run_dir / EXCHANGES_FILE, "a", encoding="utf-8") as f:
                for ex in logged:
                    f.write(json.dumps(ex.to_dict()) + "\n")
        return row

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """accelerate's backward; under DeepSpeed, whose backward also steps, only the last micro-batch syncs."""
        self.accelerator.gradient_state._set_sync_gradients(last)
        self.accelerator.backward(loss)

    def _checkpoint(self, step: int) -> Path | None:
        """Rank 0 writes the checkpoint; every rank adds its own RNG state to it first."""
        path = ckpt.save_checkpoint(
            self.run_dir,
            step,
            self.policy,
            self.optimizer,
            self.rng,
            self.pool,
            yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False),
            {"finetune": self.cfg.model.finetune, "model": self.cfg.model.name_or_path, "world_size": self.ranks.world},
            rank=self.ranks.rank,
            world=self.ranks.world,
            barrier=self.accelerator.wait_for_everyone,
        )
        return path

    def train(self) -> dict[str, Any]:
        """Run until `run.max_steps`; returns the summary (also written to summary.json)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._setup()
        cfg = self.cfg
        rows: list[dict[str, Any]] = []
        nonfinite_in_row = 0
        last_ckpt: Path | None = ckpt.latest_checkpoint(self.run_dir) if self.start_step else None
        with Progress(
            TextColumn("[bold]SSP"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            disable=not (self.progress and self.ranks.is_main),
        ) as bar:
            task = bar.add_task("", total=cfg.run.max_steps, completed=min(self.start_step, cfg.run.max_steps))
            for step in range(self.start_step + 1, cfg.run.max_steps + 1):
                bar.update(task, description=f"step {step}")
                row = self._step(step)
                rows.append(row)
                judged = row.get("judged") or 0
                if judged and (row.get("judge_invalid") or 0) / judged > cfg.judge.max_invalid_share:
                    raise TrainingError(
                        f"step {step}: {row['judge_invalid']:.0f} of {judged:.0f} judgments were invalid "
                        f"(> judge.max_invalid_share={cfg.judge.max_invalid_share}); the judge is failing, "
                        f"stopping. Resume with --resume once it works (checkpoint and pool are intact)"
                    )
                nonfinite_in_row = nonfinite_in_row + 1 if row["nonfinite"] else 0
                if nonfinite_in_row >= cfg.rl.max_nonfinite_steps:
                    raise TrainingError(
                        f"step {step}: {nonfinite_in_row} updates in a row had a non-finite loss or "
                        "gradient and were skipped (or stopped at that epoch); lower rl.learning_rate or check "
                        "the model dtype"
                    )
                if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
                    last_ckpt = self._checkpoint(step)
                asr, ref = row.get("train_asr"), row.get("benign_refusal")
                bar.update(
                    task,
                    advance=1,
                    description=(
                        f"step {step}  r_att {row.get('reward/attacker') or 0:.2f}  "
                        f"r_def {row.get('reward/defender') or 0:.2f}"
                        f"  asr {asr if asr is not None else float('nan'):.2f}  benign-refusal "
                        f"{ref if ref is not None else float('nan'):.2f}  pool {row.get('pool/size')}  "
                        f"{row['time/step']:.0f}s"
                    ),
                )
        summary = self._summary(rows, last_ckpt)
        digests = self.ranks.gather_values(self._weights_digest())
        summary["rank_weight_digests"] = digests
        if len(set(digests)) > 1:
            raise TrainingError(f"ranks hold different weights after training: {digests}")
        if self.ranks.is_main:
            self._main_pool.close()
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            tracking.finish(self.accelerator)
        self.accelerator.wait_for_everyone()
        return summary

    def _weights_digest(self) -> str:
        """sha256 over the trainable parameters: equal on every rank when gradients were synchronised."""
        h = hashlib.sha256()
        with zero3_gathered(list(self.policy.parameters())):  # sharded (ZeRO-3, FSDP): gathered
            for name, p in self.policy.named_parameters():
                if p.requires_grad:
                    h.update(name.encode())
                    h.update(full_tensor(p).float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def _summary(self, rows: list[dict[str, Any]], last_ckpt: Path | None) -> dict[str, Any]:
        def mean(key: str) -> float | None:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return round(sum(vals) / len(vals), 4) if vals else None

        phases = ["attacker_generation", "defender_generation", "judging", "update", "replay"]
        return {
            "run_dir": str(self.run_dir),
            "steps_run": len(rows),
            "last_step": rows[-1]["step"] if rows else self.start_step,
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "mean_time_per_step_s": mean("time/step"),
            "mean_time_per_phase_s": {p: mean(f"time/{p}") for p in phases},
            "mean_reward_attacker": mean("reward/attacker"),
            "mean_reward_defender": mean("reward/defender"),
            "mean_train_asr": mean("train_asr"),
            "mean_benign_refusal": mean("benign_refusal"),
            "pool_size": rows[-1].get("pool/size") if rows else None,
            "world_size": self.ranks.world,
            "distributed_type": str(self.accelerator.distributed_type).split(".")[-1],
            "metrics": str(self.run_dir / METRICS_FILE),
        }
