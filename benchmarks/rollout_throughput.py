"""Rollout throughput against this machine's bf16 and fp32 matmul ceilings, and bf16-vs-fp32 greedy agreement.

    python benchmarks/rollout_throughput.py                      # SmolLM2-135M, batch 16 64 128 256
    python benchmarks/rollout_throughput.py --batch 64 --repeats 1 --output /tmp/b64.json   # one size, quickly
    python benchmarks/rollout_throughput.py --quick              # tiny random model (CI smoke run)

For each batch size B, B packaged benign instructions (chat template applied) are continued by sampling at
the CPU preset's settings (temperature 0.7, top-p 0.9) up to `--max-new-tokens` tokens, by
  * native  ssp's own decoder (`NativeRolloutEngine`, bf16 weight copy, static KV cache, slot refill) —
            the engine `rollout.backend: auto` picks on CPU;
  * hf-fp32 the previous engine (`HFRolloutEngine`: transformers `generate` on the fp32 training model);
  * plain   `model.generate(**tokenizer(texts, padding=True), do_sample=True, …)` in fp32,
alternating, `--repeats` times each (`--no-plain` / `--no-hf` skip the slow ones at large B). Tokens counted =
generated tokens up to and including the first end-of-turn of each row (the useful ones); prefill included.

Ceilings: generating one token costs at least 2·N FLOPs (N = parameters, the tied embedding counted once, as
the LM-head matmul), so tokens/s ≤ F / (2·N) with F the best square-matmul rate (2048², best of 3) in that
dtype, measured before every batch size. Headline: `best_fraction_of_ceiling` = the native engine's best
median tokens/s ÷ the bf16 ceiling (target ≥ 0.30, i.e. ≥ 1,500 tok/s here); `speedup_vs_plain_generate_fp32`
= native ÷ plain at batch 64 (target ≥ 8).

Agreement (`--agreement N`, default 32 prompts, 64 tokens, greedy): the native bf16 engine against the native
fp32 engine (itself token-identical to transformers in the tests), as (a) teacher-forced next-token agreement:
the share of positions of the fp32 greedy continuation where the bf16 model's argmax is the same token, and
(b) free-running agreement: the share of fp32 tokens before each row's first divergence.
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
TARGET_FRACTION = 0.30
TARGET_SPEEDUP = 8.0


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """Best matmul rate (FLOP/s) over `repeats` n×n products in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def load_model(quick: bool):
    from ssp.config import ModelConfig
    from ssp.models.loader import load_base_model

    model, tok = load_base_model(ModelConfig(name_or_path="tiny" if quick else "embedded", finetune="full"))
    return model.eval(), tok


def prompts(n: int) -> list[str]:
    from ssp.game.seeds import load_seeds

    texts = [s.text for s in load_seeds("builtin", "benign")]
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


def sampling_config(max_new: int, temperature: float = 0.7, top_p: float = 0.9):
    from ssp.config import SamplingConfig

    return SamplingConfig(temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new)


def run_engine(engine, texts: list[str], sampling) -> tuple[int, float]:
    from ssp.rollout.base import ChatRequest

    reqs = [ChatRequest([{"role": "user", "content": t}]) for t in texts]
    t = time.perf_counter()
    out = engine.generate(reqs, sampling)
    dt = time.perf_counter() - t
    return sum(len(c.completion_ids) for group in out for c in group), dt


def run_plain(model, tok, texts: list[str], sampling, eos: set[int]) -> tuple[int, float]:
    tok.padding_side = "left"
    chats = [
        tok.apply_chat_template([{"role": "user", "content": x}], tokenize=False, add_generation_prompt=True)
        for x in texts
    ]
    t = time.perf_counter()
    enc = tok(chats, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos),
        )
    rows = out[:, enc["input_ids"].shape[1] :].tolist()
    dt = time.perf_counter() - t
    return useful_tokens(rows, eos), dt


@torch.no_grad()
def agreement(model, tok, n_prompts: int, max_new: int) -> dict:
    """bf16 vs fp32 greedy decoding of the native engine: teacher-forced and free-running token agreement."""
    from ssp.rollout.base import ChatRequest
    from ssp.rollout.native import NativeRolloutEngine

    greedy = sampling_config(max_new, temperature=0.0)
    reqs = [ChatRequest([{"role": "user", "content": t}]) for t in prompts(n_prompts)]
    fp32 = NativeRolloutEngine(model, tok, 768, batch_size=n_prompts, dtype="float32")
    bf16 = NativeRolloutEngine(model, tok, 768, batch_size=n_prompts, dtype="bfloat16")
    ref = [g[0] for g in fp32.generate(reqs, greedy)]
    got = [g[0] for g in bf16.generate(reqs, greedy)]
    free = total = forced = 0
    bf16_model = _bf16_copy(model)
    for r, g in zip(ref, got):
        x, y = r.completion_ids, g.completion_ids
        k = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), min(len(x), len(y)))
        free += k
        total += len(x)
        seq = torch.tensor([r.prompt_ids + x])
        logits = bf16_model(input_ids=seq).logits[0, len(r.prompt_ids) - 1 : -1].float()
        forced += int((logits.argmax(-1) == torch.tensor(x)).sum())
    return {
        "prompts": n_prompts,
        "max_new_tokens": max_new,
        "tokens": total,
        "teacher_forced_agreement": forced / total,
        "free_running_agreement": free / total,
        "rows_identical": sum(r.completion_ids == g.completion_ids for r, g in zip(ref, got)),
        "reference": "native engine, fp32 weights (token-identical to transformers' greedy generate in tests)",
        "teacher_forced_model": "transformers forward with bf16 weights",
    }


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(NAME, __doc__)
    p.add_argument(
        "--batch",
        "--batch-sizes",
        dest="batch_sizes",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes (default 16 64 128 256; quick: 2 4)",
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (quick: 8)")
    p.add_argument("--repeats", type=int, default=None, help="runs per batch size and engine (default 2; quick 1)")
    p.add_argument("--no-plain", action="store_true", help="skip plain generate")
    p.add_argument("--no-hf", action="store_true", help="skip the previous (HF fp32) engine")
    p.add_argument(
        "--agreement", type=int, default=None, help="prompts for the bf16/fp32 agreement (default 32; quick 4; 0 skips)"
    )
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    machine = common.machine_info()
    common.print_machine(machine)
    sizes = args.batch_sizes or ([2, 4] if args.quick else [16, 64, 128, 256])
    max_new = args.max_new_tokens or (8 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 2)
    n_agree = args.agreement if args.agreement is not None else (4 if args.quick else 32)
    sampling = sampling_config(max_new)
    t_start = time.perf_counter()

    from ssp.rollout.hf import HFRolloutEngine
    from ssp.rollout.native import NativeRolloutEngine

    torch.manual_seed(0)
    model, tok = load_model(args.quick)
    n_params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once
    eos = {tok.eos_token_id}
    eos |= set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    texts = prompts(max(sizes))
    t = time.perf_counter()
    native = NativeRolloutEngine(model, tok, 768, batch_size=max(sizes), dtype="bfloat16")
    run_engine(native, texts[:2], sampling_config(4))  # warm-up, and the bf16 weight copy is built here
    weight_copy_s = time.perf_counter() - t
    run_plain(model, tok, texts[:2], sampling_config(4), eos)

    results, f32_seen, bf16_seen = [], [], []
    for b in sizes:
        f32_seen.append(matmul_flops(torch.float32))
        bf16_seen.append(matmul_flops(torch.bfloat16))
        native.batch_size = b
        hf = HFRolloutEngine(model, tok, 768, batch_size=b)
        rec = {
            "batch_size": b,
            "matmul_flops_fp32_before": f32_seen[-1],
            "matmul_flops_bf16_before": bf16_seen[-1],
            "native": [],
            "hf_fp32": [],
            "plain": [],
        }
        for _ in range(repeats):
            n, dt = run_engine(native, texts[:b], sampling)
            rec["native"].append({"tokens": n, "seconds": dt, "tokens_per_s": n / dt})
            if not args.no_hf:
                n, dt = run_engine(hf, texts[:b], sampling)
                rec["hf_fp32"].append({"tokens": n, "seconds": dt, "tokens_per_s": n / dt})
            if not args.no_plain:
                n, dt = run_plain(model, tok, texts[:b], sampling, eos)
                rec["plain"].append({"tokens": n, "seconds": dt, "tokens_per_s": n / dt})
        for k in ("native", "hf_fp32", "plain"):
            rec[f"{k}_tokens_per_s"] = common.median(r["tokens_per_s"] for r in rec[k])
        print(
            f"  B={b:3d}: native {rec['native_tokens_per_s']:.1f} tok/s, hf-fp32 "
            f"{common.fmt(rec['hf_fp32_tokens_per_s'])}, plain {common.fmt(rec['plain_tokens_per_s'])} "
            f"(matmul bf16 {bf16_seen[-1] / 1e9:.0f} / fp32 {f32_seen[-1] / 1e9:.0f} GFLOP/s)",
            flush=True,
        )
        results.append(rec)
    f32_seen.append(matmul_flops(torch.float32))
    bf16_seen.append(matmul_flops(torch.bfloat16))

    ceiling_bf16 = max(bf16_seen) / (2 * n_params)
    ceiling_fp32 = max(f32_seen) / (2 * n_params)
    for rec in results:
        rec["fraction_of_bf16_ceiling"] = rec["native_tokens_per_s"] / ceiling_bf16
        if rec["plain_tokens_per_s"]:
            rec["native_over_plain"] = rec["native_tokens_per_s"] / rec["plain_tokens_per_s"]
        if rec["hf_fp32_tokens_per_s"]:
            rec["native_over_hf_fp32"] = rec["native_tokens_per_s"] / rec["hf_fp32_tokens_per_s"]
    best = max(results, key=lambda r: r["native_tokens_per_s"])
    at64 = next((r for r in results if r["batch_size"] == 64), None)
    speedup = at64.get("native_over_plain") if at64 else None
    agree = agreement(model, tok, n_agree, max_new) if n_agree else None
    headline = {
        "best_fraction_of_ceiling": best["fraction_of_bf16_ceiling"],
        "best_tokens_per_s": best["native_tokens_per_s"],
        "ceiling_bf16_tokens_per_s": ceiling_bf16,
        "speedup_vs_plain_generate_fp32": speedup,
    }
    if agree:
        headline["greedy_teacher_forced_agreement"] = agree["teacher_forced_agreement"]
    common.print_table(
        f"Generated tokens/s, sampled T 0.7 / top-p 0.9, {max_new} new tokens (median of {repeats}); ceilings: bf16 "
        f"{ceiling_bf16:.0f} tok/s, fp32 {ceiling_fp32:.0f} tok/s ({n_params / 1e6:.1f}M params)",
        ["batch", "native tok/s", "hf-fp32 tok/s", "plain tok/s", "native/plain", "native/hf-fp32", "of bf16 ceiling"],
        [
            [
                r["batch_size"],
                r["native_tokens_per_s"],
                r["hf_fp32_tokens_per_s"],
                r["plain_tokens_per_s"],
                r.get("native_over_plain"),
                r.get("native_over_hf_fp32"),
                r["fraction_of_bf16_ceiling"],
            ]
            for r in results
        ],
    )
    if agree:
        print(
            f"greedy bf16 vs fp32 on {agree['prompts']} prompts: "
            f"teacher-forced {agree['teacher_forced_agreement']:.3f}, "
            f"free-running {agree['free_running_agreement']:.3f}, identical rows {agree['rows_identical']}"
        )
    settings = {
        "model": "tiny (random)" if args.quick else "embedded SmolLM2-135M-Instruct (no adapter)",
        "parameters": n_params,
        "batch_sizes": sizes,
        "max_new_tokens": max_new,
        "repeats": repeats,
        "sampling": "temperature 0.7, top_p 0.9, top_k 0 (configs/cpu-small.yaml)",
        "prompts": "packaged benign instructions, chat template applied; one prompt per batch row",
        "matmul": "2048x2048 torch.matmul in fp32 and bf16, best of 3, before each batch size and at the end",
        "matmul_flops_fp32_peak": max(f32_seen),
        "matmul_flops_bf16_peak": max(bf16_seen),
        "ceiling_fp32_tokens_per_s": ceiling_fp32,
        "ceiling_bf16_tokens_per_s": ceiling_bf16,
        "native_weight_copy_and_warmup_s": weight_copy_s,
        "best_batch_size": best["batch_size"],
        "statistic": "median over repeats",
        "quick": args.quick,
        "wall_s": time.perf_counter() - t_start,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "agreement": agree,
    }
    meets = {"best_fraction_of_ceiling": headline["best_fraction_of_ceiling"] >= TARGET_FRACTION}
    if speedup is not None:
        meets["speedup_vs_plain_generate_fp32"] = speedup >= TARGET_SPEEDUP
    payload = common.write_results(
        args.output,
        NAME,
        headline,
        machine,
        settings,
        results,
        targets={"best_fraction_of_ceiling": TARGET_FRACTION, "speedup_vs_plain_generate_fp32": TARGET_SPEEDUP},
        meets_targets=meets,
    )
    print(
        f"best: B={best['batch_size']} {best['native_tokens_per_s']:.1f} tok/s = "
        f"{headline['best_fraction_of_ceiling']:.1%} of the bf16 ceiling; wrote {args.output}"
    )
    return payload


if __name__ == "__main__":
    main()
