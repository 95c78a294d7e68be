"""What each part of the native rollout engine buys: one setting changed at a time, with the phase split.

    python benchmarks/native_ablation.py                 # SmolLM2-135M, batch 64 and 256
    python benchmarks/native_ablation.py --quick         # tiny random model (CI smoke run)

Variants (each differs from `full` in one setting):
  * full          the engine as shipped: bf16 weights, tiered top-p candidates, chunked prefill;
  * fp32          rollout.dtype float32 (the same engine with an fp32 weight copy);
  * full_sort     top-p decided by sorting the whole vocabulary for every row (no candidate tiers);
  * one_prefill   every refill prefilled as one batch (no ~2k-token chunks).
Each variant generates for B packaged benign prompts (chat template), sampled at T 0.7 / top-p 0.9, 64 new
tokens, and reports useful tokens/s and the engine's own phase timings (`last_timings`: prefill, decode
forward, sampling, other). Medians over `--repeats`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

NAME = "native_ablation"
VARIANTS = {
    "full": {},
    "fp32": {"dtype": "float32"},
    "full_sort": {"CANDIDATE_TIERS": ()},
    "one_prefill": {"PREFILL_TOKENS": 10**9},
}


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 64 256; quick 4)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=None, help="default 1 (quick 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (quick 8)")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    machine = common.machine_info()
    common.print_machine(machine)

    import ssp.rollout.native as native
    from ssp.config import ModelConfig, SamplingConfig
    from ssp.game.seeds import load_seeds
    from ssp.models.loader import load_base_model
    from ssp.rollout.base import ChatRequest

    sizes = args.batch or ([4] if args.quick else [64, 256])
    repeats = args.repeats or 1
    sampling = SamplingConfig(
        temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens or (8 if args.quick else 64)
    )
    torch.manual_seed(0)
    model, tok = load_base_model(ModelConfig(name_or_path="tiny" if args.quick else "embedded", finetune="full"))
    texts = [s.text for s in load_seeds("builtin", "benign")]
    defaults = {"CANDIDATE_TIERS": native.CANDIDATE_TIERS, "PREFILL_TOKENS": native.PREFILL_TOKENS}
    results = []
    t_start = time.perf_counter()
    for b in sizes:
        reqs = [ChatRequest([{"role": "user", "content": texts[i % len(texts)]}]) for i in range(b)]
        for name in args.variants:
            change = VARIANTS[name]
            for key, value in defaults.items():
                setattr(native, key, change.get(key, value))
            engine = native.NativeRolloutEngine(model, tok, 768, batch_size=b, dtype=change.get("dtype", "bfloat16"))
            engine.generate(reqs[:2], SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=4))  # weights, warm-up
            runs = []
            for _ in range(repeats):
                t = time.perf_counter()
                out = engine.generate(reqs, sampling)
                dt = time.perf_counter() - t
                tokens = sum(len(c.completion_ids) for g in out for c in g)
                runs.append({"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, **engine.last_timings})
            best = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
            rec = {
                "batch_size": b,
                "variant": name,
                "change": change,
                "runs": runs,
                **{
                    k: best[k]
                    for k in (
                        "tokens_per_s",
                        "prefill_s",
                        "decode_s",
                        "sampling_s",
                        "other_s",
                        "total_s",
                        "prefill_tokens",
                        "decode_steps",
                    )
                },
            }
            print(
                f"  B={b:3d} {name:12s} {rec['tokens_per_s']:7.1f} tok/s  prefill {rec['prefill_s']:.2f}s  decode "
                f"{rec['decode_s']:.2f}s  sampling {rec['sampling_s']:.2f}s",
                flush=True,
            )
            results.append(rec)
    for key, value in defaults.items():
        setattr(native, key, value)
    full = {r["batch_size"]: r["tokens_per_s"] for r in results if r["variant"] == "full"}
    for r in results:
        if r["batch_size"] in full:
            r["full_over_variant"] = full[r["batch_size"]] / r["tokens_per_s"]
    common.print_table(
        "Native engine, one setting changed at a time (tokens/s; full ÷ variant = what the setting buys)",
        ["batch", "variant", "tok/s", "full ÷ variant", "prefill s", "decode s", "sampling s", "other s"],
        [
            [
                r["batch_size"],
                r["variant"],
                r["tokens_per_s"],
                r.get("full_over_variant"),
                r["prefill_s"],
                r["decode_s"],
                r["sampling_s"],
                r["other_s"],
            ]
            for r in results
        ],
    )
    headline = {
        f"full_over_{r['variant']}_b{r['batch_size']}": r["full_over_variant"]
        for r in results
        if r["variant"] != "full"
    }
    settings = {
        "batch_sizes": sizes,
        "variants": {n: VARIANTS[n] for n in args.variants},
        "repeats": repeats,
        "sampling": "temperature 0.7, top_p 0.9",
        "max_new_tokens": sampling.max_new_tokens,
        "quick": args.quick,
        "wall_s": time.perf_counter() - t_start,
    }
    payload = common.write_results(args.output, NAME, headline, machine, settings, results)
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
