"""Two CPU processes under `accelerate launch`: identical weights on both ranks and the same
loss trajectory as one process with the same global batch and seed."""

import pytest
import torch
from safetensors.torch import load_file
from tests.launch import LOSS_TOL, accelerate, run_to_end, sets, train_command

ARGS = sets("run.max_steps=3", "run.checkpoint_every=2")


def _launch(n: int, out, extra=()):
    # accelerate's `--cpu` flag runs one process (or needs mpirun); `--multi_gpu` starts torchrun workers,
    # which use gloo on the CPU when no GPU is present. One process: a plain run.
    options = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher = accelerate(n, *options) if n > 1 else None
    return run_to_end(train_command(out, *ARGS, *extra, launcher=launcher), out)


@pytest.mark.timeout(900)
def test_two_processes_match_one(tmp_path):
    one_rows, one = _launch(1, tmp_path / "one")
    two_rows, two = _launch(2, tmp_path / "two")
    # the ranks' weights: each rank hashes its own trainable parameters; two digests, equal
    assert two["world_size"] == 2 and len(two["rank_weight_digests"]) == 2
    assert len(set(two["rank_weight_digests"])) == 1, two["rank_weight_digests"]
    assert [r["step"] for r in two_rows] == [1, 2, 3]
    assert any(not r["update_skipped"] for r in two_rows)
    for a, b in zip(one_rows, two_rows):
        for key in ("reward/attacker", "reward/defender", "pool/size", "update_tokens"):
            assert a[key] == b[key], (key, a["step"])
        assert a["loss"] == pytest.approx(b["loss"], **LOSS_TOL)
    # The same final weights as one process, up to float summation order (the digests differ with any rounding).
    final = f"checkpoints/step-{len(one_rows):06d}/weights/adapter_model.safetensors"
    w1, w2 = load_file(tmp_path / "one" / final), load_file(tmp_path / "two" / final)
    assert w1.keys() == w2.keys() and w1
    moved = load_file(tmp_path / "one" / "checkpoints/step-000002/weights/adapter_model.safetensors")
    assert any(not torch.equal(moved[k], w1[k]) for k in w1)  # step 3 changed the weights: the check can fail
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.timeout(900)
def test_two_process_resume(tmp_path):
    out = tmp_path / "run"
    _launch(2, out, sets("run.max_steps=2"))
    rows, summary = _launch(2, out, ["--resume"])
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["steps_run"] == 1
    assert len(set(summary["rank_weight_digests"])) == 1
