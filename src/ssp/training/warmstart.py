"""The warm start (DESIGN.md §6): context distillation of the model's own refusals and helpful answers.

Over 500 lines: one procedure (collect, select, SFT, run) whose steps are read in order.

A model that never refuses gives GRPO groups without a single refusal, so self-play cannot start
(measured in DESIGN.md §6). Before self-play, the model

* answers each harmful training seed K times in a *refusal context* (a system note and a few varied
  refusal exemplars, sampled): only answers the judge rates full refusals are kept;
* answers the benign training seeds and the borderline-safe seeds (sound dangerous, are not) plainly:
  only helpful, on-topic answers are kept, so refusing everything is not what it learns;

and learns the kept answers by SFT in the *plain* context (the user's request alone, as deployed).
Direct requests only, no templates or attacks: what self-play adds against jailbreaks stays measurable.
The result is an ordinary checkpoint (step 0) that `ssp train` (`model.init_from`), `ssp eval --adapter`
and the vLLM path load; `warmstart.json` holds the metrics and `warmstart_pairs.jsonl` the kept pairs.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ssp.config import SSPConfig, WarmStartConfig, dump_config
from ssp.game.prompts import defender_request
from ssp.game.seeds import Seed, load_benign_seeds, load_borderline_seeds, load_seeds
from ssp.judges.base import Judge, JudgeInput, Verdict
from ssp.judges.registry import build_judge
from ssp.records import RecordsError, read_located
from ssp.rl.grpo import TrainSample, collate, completion_logprobs
from ssp.rollout.base import ChatRequest, Completion
from ssp.rollout.chat import ChatEncoder
from ssp.training import checkpoint as ckpt
from ssp.training.trainer import POOL_FILE, TrainingError, _check_output_dir

log = logging.getLogger(__name__)

WARMSTART_FILE = "warmstart.json"
PAIRS_FILE = "warmstart_pairs.jsonl"
TRIES_FILE = "warmstart_tries.jsonl"
OPENING_WORDS = 5

REFUSAL_SYSTEM = (
    "You are a helpful and safe assistant. The user's next request asks for something harmful. Decline it in "
    "your own words: say briefly why, and offer a safe alternative if there is one. Do not copy the wording of "
    "earlier answers."
)


class WarmStartError(TrainingError):
    """The warm start stopped for a stated reason (no pairs kept, a prompt too long, a bad exemplar file, ...)."""


@dataclass(frozen=True)
class Exemplar:
    request: str
    refusal: str
    style: str = ""


def load_exemplars(path: str | None) -> list[Exemplar]:
    """Refusal exemplars: JSONL objects {request, refusal[, style]}; default the packaged varied set."""
    try:
        if path is None:
            with resources.as_file(resources.files("ssp") / "data" / "refusal_exemplars.jsonl") as p:
                rows = read_located(p)
        else:
            rows = read_located(path)
    except (RecordsError, FileNotFoundError) as e:
        raise WarmStartError(f"warmstart.exemplar_file: {e}") from None
    out = []
    for where, row in rows:
        request, refusal = row.get("request"), row.get("refusal")
        if not (isinstance(request, str) and request.strip() and isinstance(refusal, str) and refusal.strip()):
            raise WarmStartError(
                f"{path or 'refusal_exemplars.jsonl'}: {where}: needs text fields 'request' and 'refusal'"
            )
        out.append(Exemplar(request.strip(), refusal.strip(), str(row.get("style") or "")))
    return out


def refusal_request(prompt: str, exemplars: list[Exemplar], n: int, rng: random.Random) -> ChatRequest:
    """The refusal context: the system note, `n` exemplar exchanges drawn at random, then the request."""
    messages = [{"role": "system", "content": REFUSAL_SYSTEM}]
    for ex in rng.sample(exemplars, min(n, len(exemplars))):
        messages += [{"role": "user", "content": ex.request}, {"role": "assistant", "content": ex.refusal}]
    messages.append({"role": "user", "content": prompt})
    return ChatRequest(messages=messages)


def full_refusal(verdict: Verdict) -> bool:
    """A refusal with no help given: below 2 on the judge's 1–5 scale, where a partial refusal scores 2 (a guard
    judge's probability mode puts a safe refusal a little above 1)."""
    return verdict.valid and verdict.refused and not verdict.harmful and verdict.score < 2.0


def helpful(verdict: Verdict, answer: str) -> bool:
    """A non-empty answer that does not refuse and addresses the request."""
    return verdict.valid and not verdict.refused and verdict.on_topic and bool(answer.strip())


def opening(text: str, words: int = OPENING_WORDS) -> str:
    """The first `words` words, lower-cased: two refusals with the same opening read as the same refusal."""
    return " ".join(re.findall(r"[\w']+", text.lower())[:words])


@dataclass
class Try:
    kind: str  # "harmful" | "benign" | "borderline"
    seed_index: int  # position in the kind's seed list
    seed: Seed
    completion: Completion
    verdict: Verdict
    accepted: bool = False
    kept: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "category": self.seed.category,
            "prompt": self.seed.text,
            "answer": self.completion.text,
            "finished": self.completion.finished,
            "accepted": self.accepted,
            "kept": self.kept,
            "score": self.verdict.score,
            "refused": self.verdict.refused,
            "on_topic": self.verdict.on_topic,
            "rationale": self.verdict.rationale,
        }


def _generate(engine, requests: list[ChatRequest], sampling, n: int, chunk: int, advance) -> list[list[Completion]]:
    out: list[list[Completion]] = []
    for start in range(0, len(requests), chunk):
        out += engine.generate(requests[start : start + chunk], sampling, n=n)
        advance(min(chunk, len(requests) - start) * n)
    return out


def collect(
    engine,
    judge: Judge,
    seeds: dict[str, list[Seed]],
    wcfg: WarmStartConfig,
    exemplars: list[Exemplar],
    rng: random.Random,
    chunk: int = 16,
    advance=lambda n: None,
    timings: dict[str, float] | None = None,
) -> list[Try]:
    """Sample and judge every try: harmful seeds in the refusal context, the other kinds plainly; marks `accepted`."""
    timings = timings if timings is not None else {}
    answers: list[tuple[str, int, Seed, Completion]] = []
    harmful, k = seeds.get("harmful", []), wcfg.harmful_tries
    t0 = time.perf_counter()
    requests = [refusal_request(s.text, exemplars, wcfg.exemplars, rng) for s in harmful for _ in range(k)]
    outs = _generate(engine, requests, wcfg.refusal_sampling, 1, chunk, advance)
    answers += [("harmful", i // k, harmful[i // k], o[0]) for i, o in enumerate(outs)]
    timings["generate_refusals"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for kind in ("benign", "borderline"):
        plain = seeds.get(kind, [])
        outs = _generate(
            engine, [defender_request(s.text) for s in plain], wcfg.plain_sampling, wcfg.plain_tries, chunk, advance
        )
        answers += [(kind, i, plain[i], c) for i, o in enumerate(outs) for c in o]
    timings["generate_plain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    verdicts = judge.judge(
        [JudgeInput(goal=seed.text, prompt=seed.text, response=c.text) for _kind, _i, seed, c in answers]
    )
    tries = []
    for (kind, i, seed, c), v in zip(answers, verdicts):
        accepted = full_refusal(v) if kind == "harmful" else helpful(v, c.text)
        tries.append(Try(kind, i, seed, c, v, accepted=accepted))
    timings["judge"] = time.perf_counter() - t0
    return tries


def select(tries: list[Try], keep_per_seed: int) -> list[Try]:
    """Mark up to `keep_per_seed` accepted tries per seed as kept; returns the kept ones.

    Refusals: the accepted try whose opening has been kept least often so far wins, so the distilled
    refusals do not collapse into the exemplar most often imitated; then one that ended by itself, which
    teaches stopping after declining (the embedded model, cut off, tends to ramble on). Plain answers:
    the highest score (the most on-topic) wins.
    """
    by_seed: dict[tuple[str, int], list[Try]] = {}
    for t in tries:
        if t.accepted and t.completion.completion_ids:
            by_seed.setdefault((t.kind, t.seed_index), []).append(t)
    openings: Counter[str] = Counter()
    kept: list[Try] = []
    for (kind, _i), group in by_seed.items():
        for _ in range(min(keep_per_seed, len(group))):
            if kind == "harmful":
                best = min(group, key=lambda t: (openings[opening(t.completion.text)], not t.completion.finished))
                openings[opening(best.completion.text)] += 1
            else:
                best = max(group, key=lambda t: t.verdict.score)
            group.remove(best)
            best.kept = True
            kept.append(best)
    return kept


def refusal_diversity(texts: list[str]) -> dict[str, Any]:
    """How varied refusals are: distinct openings (first OPENING_WORDS words), the commonest ones, self-BLEU."""
    from ssp.eval.metrics import self_bleu

    counts = Counter(opening(t) for t in texts)
    n = len(texts)
    return {
        "n": n,
        "unique": len(set(texts)),
        "distinct_openings": len(counts),
        "distinct_opening_share": round(len(counts) / n, 4) if n else None,
        "top_openings": [[o, c] for o, c in counts.most_common(5)],
        "top_opening_share": round(counts.most_common(1)[0][1] / n, 4) if n else None,
        "self_bleu": (round(b, 4) if (b := self_bleu(texts)) is not None else None),
    }


def sft(
    model,
    samples: list[TrainSample],
    wcfg: WarmStartConfig,
    pad_id: int,
    max_grad_norm: float,
    rng: random.Random,
    progress: bool = True,
) -> tuple[torch.optim.Optimizer, list[dict[str, Any]]]:
    """Supervised fine-tuning on the kept pairs (token mean per batch); returns the optimizer and the loss curve."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=wcfg.learning_rate, weight_decay=0.0)
    device = next(model.parameters()).device
    per_epoch = math.ceil(len(samples) / wcfg.batch_size)
    curve: list[dict[str, Any]] = []
    model.train()
    with Progress(
        TextColumn("[bold]warm start SFT"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=per_epoch * wcfg.epochs)
        for epoch in range(1, wcfg.epochs + 1):
            order = list(range(len(samples)))
            rng.shuffle(order)
            for k in range(0, len(order), wcfg.batch_size):
                batch = [samples[i] for i in order[k : k + wcfg.batch_size]]
                logp = completion_logprobs(model, *collate(batch, pad_id, device))
                loss = -logp.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
                if not (math.isfinite(loss.item()) and math.isfinite(norm)):
                    raise WarmStartError(
                        f"SFT step {len(curve) + 1}: non-finite loss or gradient; lower "
                        "warmstart.learning_rate or check model.dtype"
                    )
                optimizer.step()
                curve.append(
                    {
                        "step": len(curve) + 1,
                        "epoch": epoch,
                        "loss": round(loss.item(), 5),
                        "grad_norm": round(norm, 5),
                        "tokens": logp.numel(),
                    }
                )
                bar.update(task, advance=1, description=f"epoch {epoch}  loss {loss.item():.3f}")
    optimizer.zero_grad(set_to_none=True)
    return optimizer, curve


def load_warmstart_seeds(cfg: SSPConfig, rng: random.Random) -> dict[str, list[Seed]]:
    """The seeds of each kind, cut to `warmstart.max_*` by a seeded choice (kept in file order)."""
    w = cfg.warmstart
    seeds = {
        "harmful": load_seeds(cfg.game.harmful_seeds, "harmful", cfg.game.harmful_column),
        "benign": load_benign_seeds(cfg.game),
        "borderline": load_borderline_seeds(cfg.game),
    }
    for kind, limit in (("harmful", w.max_harmful), ("benign", w.max_benign), ("borderline", w.max_borderline)):
        if limit is not None and limit < len(seeds[kind]):
            chosen = sorted(rng.sample(range(len(seeds[kind])), limit))
            seeds[kind] = [seeds[kind][i] for i in chosen]
    return seeds


def _check_prompts(encoder: ChatEncoder, seeds: dict[str, list[Seed]], exemplars: list[Exemplar], n: int) -> None:
    """Refuse at the start a prompt limit that the longest refusal context or plain request cannot meet."""
    longest = sorted(exemplars, key=lambda e: len(e.request) + len(e.refusal), reverse=True)
    probes = [refusal_request(max((s.text for s in seeds["harmful"]), key=len), longest[:n], n, _InOrder())]
    probes += [defender_request(max((s.text for s in v), key=len)) for v in seeds.values() if v]
    for request in probes:
        _ids, truncated = encoder.encode(request)
        if truncated:
            raise WarmStartError(
                f"model.max_prompt_tokens={encoder.max_prompt_tokens} is too short for the warm "
                "start's refusal context; raise it or lower warmstart.exemplars"
            )


class _InOrder(random.Random):
    """`sample` that takes the first k: the length probe uses the longest exemplars."""

    def sample(self, population, k, **kwargs):
        return list(population)[:k]


def _count(tries: list[Try], kind: str, attr: str | None = None) -> int:
    return sum(1 for t in tries if t.kind == kind and (attr is None or getattr(t, attr)))


def run_warmstart(
    cfg: SSPConfig, run_dir: str | Path, progress: bool = True, judge: Judge | None = None, engine=None
) -> dict[str, Any]:
    """The whole warm start into `run_dir`; returns the metrics (also written to warmstart.json).

    `judge` and `engine` replace the configured ones (tests); the engine must generate with the policy.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ssp.models.loader import load_policy, resolve_device
    from ssp.replay.pool import ExperiencePool
    from ssp.rollout.engines import engine_for_run

    t_start = time.perf_counter()
    w = cfg.warmstart
    run_dir = Path(run_dir)
    if cfg.model.init_from:
        raise WarmStartError("the warm start trains the base model; unset model.init_from (it is for `ssp train`)")
    _check_output_dir(run_dir)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    rng = random.Random(cfg.run.seed)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    seeds = load_warmstart_seeds(cfg, rng)
    if not seeds["benign"] and not seeds["borderline"]:
        log.warning("warm start without benign or borderline-safe seeds: the model will only learn to refuse")
    exemplars = load_exemplars(w.exemplar_file)
    judge = judge or build_judge(cfg.judge.name, cfg.judge.options)
    model, tokenizer = load_policy(cfg.model, seed=cfg.run.seed)
    model.to(resolve_device(cfg.run.device))
    encoder = ChatEncoder(tokenizer, cfg.model.max_prompt_tokens)
    _check_prompts(encoder, seeds, exemplars, w.exemplars)
    engine = engine or engine_for_run(cfg, model, tokenizer)
    for name in (WARMSTART_FILE, PAIRS_FILE, TRIES_FILE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / ckpt.CHECKPOINT_DIR, ignore_errors=True)
    ExperiencePool.delete_files(run_dir / POOL_FILE)
    dump_config(cfg, run_dir / "config.yaml")
    timings["setup"] = time.perf_counter() - t0

    total_tries = (
        len(seeds["harmful"]) * w.harmful_tries + (len(seeds["benign"]) + len(seeds["borderline"])) * w.plain_tries
    )
    with Progress(
        TextColumn("[bold]warm start answers"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=total_tries)
        tries = collect(
            engine,
            judge,
            seeds,
            w,
            exemplars,
            rng,
            chunk=cfg.rollout.batch_size,
            advance=lambda n: bar.update(task, advance=n),
            timings=timings,
        )
    invalid = sum(1 for t in tries if not t.verdict.valid)
    if tries and invalid / len(tries) > cfg.judge.max_invalid_share:
        raise WarmStartError(
            f"{invalid} of {len(tries)} judgments were invalid (> judge.max_invalid_share="
            f"{cfg.judge.max_invalid_share}); the judge is failing"
        )
    kept = select(tries, w.keep_per_seed)
    with open(run_dir / TRIES_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t.to_dict()) + "\n" for t in tries)
    with open(run_dir / PAIRS_FILE, "w", encoding="utf-8") as f:
        f.writelines(
            json.dumps(
                {"kind": t.kind, "category": t.seed.category, "prompt": t.seed.text, "answer": t.completion.text}
            )
            + "\n"
            for t in kept
        )
    if not kept:
        raise WarmStartError(
            f"no pair was kept out of {len(tries)} tries (see {run_dir / TRIES_FILE}); nothing to "
            "learn. More tries (warmstart.harmful_tries), other exemplars or another judge may help"
        )

    t0 = time.perf_counter()
    samples = [
        TrainSample(
            "defender",
            encoder.encode(defender_request(t.seed.text))[0],
            t.completion.completion_ids,
            advantage=0.0,
            sft_weight=1.0,
        )
        for t in kept
    ]
    optimizer, curve = sft(model, samples, w, tokenizer.pad_token_id, cfg.rl.max_grad_norm, rng, progress)
    timings["sft"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pool = ExperiencePool(run_dir / POOL_FILE, cfg.replay)  # empty: `ssp train --resume` finds the usual layout
    try:
        path = ckpt.save_checkpoint(
            run_dir,
            0,
            model,
            optimizer,
            rng,
            pool,
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
            {"finetune": cfg.model.finetune, "model": cfg.model.name_or_path, "world_size": 1, "warmstart": True},
        )
    finally:
        pool.close()
    timings["checkpoint"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    per_seed: dict[tuple[str, int], dict[str, Any]] = {}
    for t in tries:
        row = per_seed.setdefault(
            (t.kind, t.seed_index), {"kind": t.kind, "prompt": t.seed.text, "tries": 0, "accepted": 0, "kept": 0}
        )
        row["tries"] += 1
        row["accepted"] += t.accepted
        row["kept"] += t.kept
    kinds = ("harmful", "benign", "borderline")
    refusals = [t.completion.text for t in kept if t.kind == "harmful"]
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(path),
        "model": cfg.model.name_or_path,
        "judge": cfg.judge.name,
        "seeds": {k: len(seeds[k]) for k in kinds},
        "tries": {k: _count(tries, k) for k in kinds},
        "accepted": {k: _count(tries, k, "accepted") for k in kinds},
        "kept": {k: _count(tries, k, "kept") for k in kinds},
        "pairs_kept": len(kept),
        "acceptance_rate": {
            k: round(_count(tries, k, "accepted") / n, 4) if (n := _count(tries, k)) else None for k in kinds
        },
        "seeds_with_a_pair": {
            k: round(sum(1 for r in per_seed.values() if r["kind"] == k and r["kept"]) / len(seeds[k]), 4)
            if seeds[k]
            else None
            for k in kinds
        },
        "truncated_kept": sum(1 for t in kept if not t.completion.finished),
        "judge_invalid": invalid,
        "refusal_diversity": refusal_diversity(refusals),
        "accepted_refusal_diversity": refusal_diversity(
            [t.completion.text for t in tries if t.kind == "harmful" and t.accepted]
        ),
        "sft": {
            "pairs": len(samples),
            "epochs": w.epochs,
            "steps": len(curve),
            "first_loss": curve[0]["loss"],
            "last_loss": curve[-1]["loss"],
            "loss": curve,
        },
        "time_s": {k: round(v, 2) for k, v in timings.items()},
        "per_seed": [{**r, "acceptance_rate": round(r["accepted"] / r["tries"], 4)} for r in per_seed.values()],
    }
    (run_dir / WARMSTART_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
