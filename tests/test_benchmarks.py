"""Smoke tests: each benchmark's --quick mode runs and writes its result file (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--output", str(out), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _common_layout(data: dict, name: str) -> None:
    assert data["benchmark"] == name
    m = data["machine"]
    assert _number(m["cpu_count"]) and _number(m["torch_threads"])
    assert len(m["loadavg_at_start"]) == 3 and all(_number(x) for x in m["loadavg_at_start"])
    assert m["versions"]["torch"] and m["versions"]["transformers"]
    assert isinstance(data["settings"], dict) and data["settings"]["quick"] is True
    for key, value in data["headline"].items():
        assert data[key] == value


def test_train_step_vs_trl_quick(tmp_path):
    pytest.importorskip("trl")
    data = _run("train_step_vs_trl.py", tmp_path / "trl.json")
    _common_layout(data, "train_step_vs_trl")
    assert _number(data["ratio_ssp_over_trl"])
    assert _number(data["ratio_ssp_over_trl_lora"]) and _number(data["ratio_ssp_over_trl_full"])
    for mode in data["results"]:
        assert _number(mode["ssp"]["step"]["median"]) and _number(mode["trl"]["step"]["median"])
        eq = mode["equivalence"]
        assert _number(eq["max_abs_logp_diff"]) and _number(eq["loss_abs_diff"])


def test_rollout_throughput_quick(tmp_path):
    data = _run("rollout_throughput.py", tmp_path / "rollout.json")
    _common_layout(data, "rollout_throughput")
    assert _number(data["best_fraction_of_ceiling"]) and data["best_fraction_of_ceiling"] > 0
    assert [r["batch_size"] for r in data["results"]] == [2, 4]
    for r in data["results"]:
        assert all(_number(r[f"{k}_tokens_per_s"]) for k in ("native", "hf_fp32", "plain"))
    for key in ("best_tokens_per_s", "ceiling_bf16_tokens_per_s"):
        assert _number(data[key]) and data[key] > 0
    agree = data["settings"]["agreement"]
    assert 0.0 <= agree["teacher_forced_agreement"] <= 1.0 and agree["tokens"] > 0


def test_native_ablation_quick(tmp_path):
    data = _run("native_ablation.py", tmp_path / "ablation.json")
    _common_layout(data, "native_ablation")
    assert [r["variant"] for r in data["results"]] == ["full", "fp32", "full_sort", "one_prefill"]
    for r in data["results"]:
        assert _number(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and _number(r["full_over_variant"])
        assert r["prefill_s"] + r["decode_s"] + r["sampling_s"] <= r["total_s"] + 1e-6


def test_memory_quick(tmp_path):
    data = _run("memory.py", tmp_path / "memory.json")
    _common_layout(data, "memory")
    assert _number(data["peak_rss_mb_tiny"]) and data["peak_rss_mb_tiny"] > 0
    (tiny,) = data["results"]
    assert _number(tiny["step_s"]) and all(_number(v) for v in tiny["phases_s"].values())


def test_inverse_cdf_sampler_matches_the_categorical_distribution():
    """The CPU sampling speed-up in ssp.rollout.hf draws from exactly the distribution torch.multinomial does."""
    import torch

    from ssp.rollout.hf import cpu_fast_sampling, inverse_cdf_sample

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, generator=g) * 2, -1)
    probs[[3, 17, 40]] = 0.0  # filtered tokens (top-k / top-p) must never be drawn
    n = 200_000
    draws = inverse_cdf_sample(probs.repeat(n, 1), generator=g)[:, 0]
    freq = torch.bincount(draws, minlength=50).double() / n
    want = (probs / probs.sum()).double()
    assert freq[[3, 17, 40]].sum() == 0
    # binomial standard error per token; 5 sigma
    assert torch.all((freq - want).abs() <= 5 * torch.sqrt(want * (1 - want) / n) + 1e-9)
    original = torch.multinomial
    with cpu_fast_sampling():
        assert torch.multinomial is not original
        assert torch.multinomial(probs[None], 1).shape == (1, 1)
        assert torch.multinomial(probs, 3).shape == (3,)  # other calls go to torch unchanged
    assert torch.multinomial is original
