"""Rollout throughput: generated tokens/s of ssp's HF engine vs plain `model.generate`, and the ceiling.

    python benchmarks/rollout_throughput.py           # SmolLM2-135M, batch 1, 2, 4, ..., 64
    python benchmarks/rollout_throughput.py --quick   # tiny random model, batch 1, 2, 4 (CI)

For each batch size B, B packaged benign instructions (the Defender's seed prompts, chat template
applied) are continued by sampling (temperature 1, top-p 1: the default `rollout.defender`) up to
`--max-new-tokens` tokens, by
  * engine  `HFRolloutEngine(model, tok, batch_size=B).generate(requests, sampling)` (ssp), and
  * plain   `model.generate(**tokenizer(texts, padding=True), do_sample=True, max_new_tokens=…)`,
alternating, `--repeats` times each. Tokens counted = generated tokens up to and including the
first end-of-turn of each row (the useful ones; the same rule for both). Prefill time is included.

The arithmetic ceiling: generating one token costs at least 2·N floating-point operations (N =
parameters; the tied embedding counted once, as the LM head matmul), so tokens/s ≤ F / (2·N) with F
= the machine's fp32 matmul rate, measured here by timing a 4096² `torch.matmul` (best of 3) before
every batch size; F = the best over the run. Attention and everything else are ignored, so the
ceiling is an upper bound. Headline: `best_fraction_of_ceiling` = best median tokens/s of the engine
over all B ÷ ceiling (target ≥ 0.5).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

NAME = "rollout_throughput"
TARGET_FRACTION = 0.5


def matmul_flops(n: int = 4096, repeats: int = 3) -> float:
    """Best fp32 matmul rate (FLOP/s) over `repeats` n×n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def load_model(quick: bool, lora: bool = False):
    from ssp.config import ModelConfig
    from ssp.models.loader import load_base_model, load_policy

    cfg = ModelConfig(name_or_path="tiny" if quick else "embedded", finetune="lora" if lora else "full")
    model, tok = load_policy(cfg) if lora else load_base_model(cfg)
    return model.eval(), tok


def prompts(n: int) -> list[str]:
    from ssp.game.seeds import load_seeds

    seeds = load_seeds("builtin", "benign")
    texts = [s.text for s in seeds]
    return [texts[i % len(texts)] for i in range(n)]


def useful_tokens(rows: list[list[int]], eos: set[int]) -> int:
    total = 0
    for row in rows:
        n = len(row)
        for i, t in enumerate(row):
            if t in eos:
                n = i + 1
                break
        total += n
    return total


def run_engine(model, tok, texts: list[str], max_new: int, fast_sampling: bool = True) -> tuple[int, float]:
    from ssp.config import SamplingConfig
    from ssp.rollout.base import ChatRequest
    from ssp.rollout.hf import HFRolloutEngine

    engine = HFRolloutEngine(model, tok, max_prompt_tokens=768, batch_size=len(texts), fast_sampling=fast_sampling)
    reqs = [ChatRequest([{"role": "user", "content": t}]) for t in texts]
    t = time.perf_counter()
    out = engine.generate(reqs, SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new))
    dt = time.perf_counter() - t
    return sum(len(c.completion_ids) for group in out for c in group), dt


def run_plain(model, tok, texts: list[str], max_new: int, eos: set[int]) -> tuple[int, float]:
    tok.padding_side = "left"
    chats = [tok.apply_chat_template([{"role": "user", "content": x}], tokenize=False, add_generation_prompt=True)
             for x in texts]
    t = time.perf_counter()
    enc = tok(chats, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=max_new,
                             pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos))
    rows = out[:, enc["input_ids"].shape[1]:].tolist()
    dt = time.perf_counter() - t
    return useful_tokens(rows, eos), dt


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1 2 4 8 16 32 64 (quick: 1 2 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 48 (quick: 8)")
    p.add_argument("--repeats", type=int, default=None, help="runs per batch size and engine (default 2; quick 1)")
    p.add_argument("--no-plain", action="store_true", help="measure the engine only")
    p.add_argument("--sampling-ablation", action="store_true",
                   help="also run the engine with torch.multinomial sampling (fast_sampling=False), alternating")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    machine = common.machine_info()
    common.print_machine(machine)
    sizes = args.batch_sizes or ([1, 2, 4] if args.quick else [1, 2, 4, 8, 16, 32, 64])
    max_new = args.max_new_tokens or (8 if args.quick else 48)
    repeats = args.repeats or (1 if args.quick else 2)
    t_start = time.perf_counter()

    torch.manual_seed(0)
    model, tok = load_model(args.quick)
    n_params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once
    eos = {tok.eos_token_id}
    eos |= set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
               else [model.generation_config.eos_token_id])
    texts = prompts(max(sizes))
    run_engine(model, tok, texts[:2], 4)  # warm-up (first-call allocations, lazy imports)
    run_plain(model, tok, texts[:2], 4, eos)

    results, flops_seen = [], []
    for b in sizes:
        flops_seen.append(matmul_flops())
        rec = {"batch_size": b, "matmul_flops_before": flops_seen[-1], "engine": [], "plain": [], "engine_multinomial": []}
        for _ in range(repeats):
            n, dt = run_engine(model, tok, texts[:b], max_new)
            rec["engine"].append({"tokens": n, "seconds": dt, "tokens_per_s": n / dt})
            if not args.no_plain:
                n, dt = run_plain(model, tok, texts[:b], max_new, eos)
                rec["plain"].append({"tokens": n, "seconds": dt, "tokens_per_s": n / dt})
            if args.sampling_ablation:
                n, dt = run_engine(model, tok, texts[:b], max_new, fast_sampling=False)
                rec["engine_multinomial"].append({"tokens": n, "seconds": dt, "tokens_per_s": n / dt})
        for k in ("engine", "plain", "engine_multinomial"):
            rec[f"{k}_tokens_per_s"] = common.median(r["tokens_per_s"] for r in rec[k])
        print(f"  B={b:3d}: engine {rec['engine_tokens_per_s']:.1f} tok/s, plain "
              f"{common.fmt(rec['plain_tokens_per_s'])} tok/s (matmul {flops_seen[-1] / 1e9:.0f} GFLOP/s)", flush=True)
        results.append(rec)
    flops_seen.append(matmul_flops())

    peak = max(flops_seen)
    ceiling = peak / (2 * n_params)
    for rec in results:
        rec["fraction_of_ceiling"] = rec["engine_tokens_per_s"] / ceiling
        local = rec["matmul_flops_before"] / (2 * n_params)
        rec["fraction_of_local_ceiling"] = rec["engine_tokens_per_s"] / local
        if rec["plain_tokens_per_s"]:
            rec["engine_over_plain"] = rec["engine_tokens_per_s"] / rec["plain_tokens_per_s"]
        if rec["engine_multinomial_tokens_per_s"]:
            rec["fast_sampling_speedup"] = rec["engine_tokens_per_s"] / rec["engine_multinomial_tokens_per_s"]
    best = max(results, key=lambda r: r["engine_tokens_per_s"])
    headline = {"best_fraction_of_ceiling": best["fraction_of_ceiling"]}
    common.print_table(
        f"Generated tokens/s (median of {repeats}; ceiling {ceiling:.0f} tok/s = {peak / 1e9:.0f} GFLOP/s ÷ "
        f"2·{n_params / 1e6:.1f}M params; target ≥ {TARGET_FRACTION:.0%} at the best batch)",
        ["batch", "engine tok/s", "plain tok/s", "engine/plain", "engine multinomial tok/s", "of ceiling",
         "of ceiling (local F)"],
        [[r["batch_size"], r["engine_tokens_per_s"], r["plain_tokens_per_s"], r.get("engine_over_plain"),
          r["engine_multinomial_tokens_per_s"], r["fraction_of_ceiling"], r["fraction_of_local_ceiling"]]
         for r in results])
    settings = {
        "model": "tiny (random)" if args.quick else "embedded SmolLM2-135M-Instruct (fp32, no adapter)",
        "parameters": n_params, "batch_sizes": sizes, "max_new_tokens": max_new, "repeats": repeats,
        "sampling": "temperature 1.0, top_p 1.0, top_k 0 (rollout.defender default)",
        "prompts": "packaged benign instructions, chat template applied",
        "matmul": "fp32 4096x4096 torch.matmul, best of 3, measured before each batch size and at the end",
        "matmul_flops_peak": peak, "matmul_flops_all": flops_seen, "ceiling_tokens_per_s": ceiling,
        "best_batch_size": best["batch_size"], "best_tokens_per_s": best["engine_tokens_per_s"],
        "statistic": "median over repeats", "quick": args.quick, "wall_s": time.perf_counter() - t_start,
        "sampling_ablation": args.sampling_ablation, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    payload = common.write_results(args.output, NAME, headline, machine, settings, results,
                                   targets={"best_fraction_of_ceiling": TARGET_FRACTION},
                                   meets_targets={"best_fraction_of_ceiling": headline["best_fraction_of_ceiling"] >= TARGET_FRACTION})
    print(f"best: B={best['batch_size']} {best['engine_tokens_per_s']:.1f} tok/s = "
          f"{headline['best_fraction_of_ceiling']:.1%} of the ceiling; wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
