"""Crash safety (issue 7 §1): `kill -9` a real `ssp train` process at chosen points in the code, then `--resume`.

The child (tests/crash_child.py) stops itself before the n-th call of a named function (a step's update, the pool
admission, each stage of checkpoint writing, the pool restore and the end of setup on resume) and signals it with a
file; the test then kills it. Where it dies is therefore the same on every machine and every run, and so is the step
each resume must start from (asserted).

Each kill is followed by checks on a copy of the run folder, resumed in this process exactly as `--resume` does it
(`Trainer._setup`): it must start from the newest *complete* checkpoint (verified here independently: manifest
present, every listed file present with its sha256, nothing unlisted), hold exactly that checkpoint's experience pool
and weights, and have dropped the log rows of steps played after it. The real run folder is then resumed by a new
`ssp train --resume` process. When a kill inside checkpoint writing leaves a temporary folder without a manifest, the
test also plants a copy under the final name (a torn rename), which must never be loaded either.

At the end the run is finished without kills: metrics.jsonl holds steps 1..N exactly once, and the
result equals an uninterrupted reference run with the same seed (metrics, pool, weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import REPO

from ssp.config import load_config
from ssp.fsutil import sqlite_readonly_uri
from ssp.training.trainer import Trainer

TINY = str(REPO / "configs" / "tiny.yaml")
N_STEPS = 10
LOG_EXCHANGES = 2
# (what is interrupted, function to stop before, its n-th call in that process [, only calls on paths holding this],
#  the step the next resume must start from)
KILLS = [
    ("step 2: the update", "ssp.training.trainer:grpo_update", 2, None, 1),
    ("checkpoint 2: weights written, optimizer not", "ssp.training.checkpoint:optimizer_to_files", 1, None, 1),
    ("resume: restoring the pool", "ssp.replay.pool:ExperiencePool.restore", 1, None, 1),
    ("checkpoint 2: hashing its files, no manifest", "ssp.training.checkpoint:_sha256", 3, ".tmp-", 1),
    ("resume: setup done, no step played", "ssp.training.trainer:dump_config", 1, None, 1),
    ("step 3: pool admission", "ssp.replay.pool:ExperiencePool.admit", 2, None, 2),
    ("checkpoint 4: pool snapshot", "ssp.replay.pool:ExperiencePool.snapshot", 2, None, 3),
    ("checkpoint 5: renamed, folder not yet synced", "ssp.training.checkpoint:fsync_dir", 2, None, 5),
]
TORN_PLANTED = 2  # the checkpoint 2 weights kill and the checkpoint 4 snapshot kill leave a folder without manifest
SETS = [
    f"run.max_steps={N_STEPS}",
    "run.checkpoint_every=1",
    f"run.log_exchanges={LOG_EXCHANGES}",
    "rollout.attacker.max_new_tokens=8",
    "rollout.defender.max_new_tokens=8",
]
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def spawn(
    run: Path, resume: bool, log: Path, stop_at: tuple[Path, str, int, str | None] | None = None
) -> subprocess.Popen:
    """`ssp train` on the tiny config; with `stop_at` = (marker, function, n, under) it stops itself there."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ssp"]
    if stop_at is not None:
        marker, target, nth, under = stop_at
        cmd = [
            sys.executable,
            "-m",
            "tests.crash_child",
            str(marker),
            target,
            str(nth),
            *([under] if under else []),
            "--",
        ]
    cmd += ["train", "-c", TINY, "-o", str(run), "--quiet", *(["--resume"] if resume else [])]
    for s in SETS + ["run.threads=1"]:
        cmd += ["--set", s]
    with open(log, "ab") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


def complete_checkpoints(run: Path) -> dict[int, Path]:
    """Checkpoints that verify, checked here without the project's code."""
    out = {}
    root = run / "checkpoints"
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if not (m and d.is_dir() and (d / "manifest.json").is_file()):
            continue
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except ValueError:
            continue
        files = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"manifest.json"}
        if files == set(manifest["files"]) and all(
            hashlib.sha256((d / f).read_bytes()).hexdigest() == h for f, h in manifest["files"].items()
        ):
            out[int(m.group(1))] = d
    return out


def temp_checkpoints(run: Path, since: float = 0.0) -> list[Path]:
    """Temporary checkpoint folders modified at or after `since` (they vanish when renamed: tolerated)."""
    root = run / "checkpoints"
    out = []
    for p in list(root.iterdir()) if root.is_dir() else []:
        try:
            if p.name.startswith(".tmp-") and p.stat().st_mtime >= since:
                out.append(p)
        except FileNotFoundError:
            continue
    return sorted(out)


def pool_dump(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with sqlite3.connect(sqlite_readonly_uri(path), uri=True) as db:
        return db.execute("SELECT * FROM entries ORDER BY id").fetchall() + [
            ("meta",) + r for r in db.execute("SELECT key, value FROM meta ORDER BY key")
        ]


def live_entries(dump: list[tuple]) -> int:
    with_cols = [e for e in dump if e[0] != "meta"]
    return sum(1 for e in with_cols if e[2] == 0)  # column 2 = retired


def rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_marker(marker: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """True once the child has reached its stop point (it writes `marker`, then stops itself); False if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        if proc.poll() is not None:
            return marker.exists()
        time.sleep(0.01)
    return False


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL this one process (by its id); True when it was still running."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.returncode == -signal.SIGKILL


def resume_check(run: Path, scratch: Path, figures: Counter) -> int:
    """Resume a copy of `run` in-process; check it starts from the newest complete checkpoint. Returns K."""
    complete = complete_checkpoints(run)
    k = max(complete, default=0)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(run, scratch)
    expected_pool = pool_dump(scratch / "checkpoints" / f"step-{k:06d}" / "pool.sqlite") if k else []
    cfg = load_config(TINY, SETS)  # no run.threads here: it would change this test process's torch threads
    trainer = Trainer(cfg, scratch, resume=True, progress=False)
    trainer._setup()
    try:
        assert trainer.start_step == k, f"resumed from step {trainer.start_step}, newest complete checkpoint is {k}"
        live = pool_dump(scratch / "pool.sqlite")
        if k:
            assert live == expected_pool, "pool differs from the checkpoint's"
        else:  # no checkpoint: a fresh, empty pool
            assert [e for e in live if e[0] != "meta"] == []
            assert all(e[2] in (0, 1) for e in live if e[1] != "schema_version")
        metric_rows = rows(scratch / "metrics.jsonl")
        assert [r["step"] for r in metric_rows] == list(range(1, k + 1)), "log rows after the checkpoint kept"
        if k:
            assert metric_rows[-1]["pool/size"] == live_entries(expected_pool), "pool snapshot is not step K's"
            from peft import get_peft_model_state_dict

            saved = load_file(complete[k] / "weights" / "adapter_model.safetensors")
            loaded = get_peft_model_state_dict(trainer.policy)
            assert saved.keys() == loaded.keys()
            for name, tensor in saved.items():
                assert torch.equal(tensor, loaded[name].detach().cpu()), name
        ex_steps = Counter(x["step"] for x in rows(scratch / "exchanges.jsonl"))
        assert set(ex_steps) <= set(range(1, k + 1)) and all(n <= LOG_EXCHANGES for n in ex_steps.values())
    finally:
        if trainer.pool is not None:
            trainer.pool.close()
    figures["pool entries checked after resume"] += len([e for e in expected_pool if e[0] != "meta"])
    return k


@pytest.mark.timeout(600)
def test_kill_9_at_chosen_points_then_resume(tmp_path):
    run, reference, scratch = tmp_path / "run", tmp_path / "reference", tmp_path / "scratch"
    log = tmp_path / "stderr.log"
    figures: Counter = Counter()
    # The uninterrupted reference run shares the two cores with the crash loop (one thread each).
    ref_proc = spawn(reference, resume=False, log=tmp_path / "reference.log")

    history = []
    for i, (what, target, nth, under, expected_k) in enumerate(KILLS):
        marker = tmp_path / f"stopped-{i}"
        t_spawn = time.time()
        proc = spawn(run, resume=i > 0, log=log, stop_at=(marker, target, nth, under))
        if not wait_for_marker(marker, proc, 300):
            kill(proc)
            pytest.fail(f"kill {i} ({what}): the child never reached {target} call {nth}: {log.read_text()[-3000:]}")
        assert kill(proc), f"kill {i} ({what}): the child had exited: {log.read_text()[-3000:]}"
        figures["kills"] += 1
        partial = temp_checkpoints(run, since=t_spawn)
        if partial:
            figures["kills that left a partial checkpoint folder"] += 1
            tmp = partial[-1]
            if not (tmp / "manifest.json").exists():
                torn = tmp.parent / tmp.name.removeprefix(".tmp-")
                if not torn.exists():  # a torn rename: complete-looking name, no manifest
                    shutil.copytree(tmp, torn)
                    figures["torn checkpoints planted"] += 1
        k = resume_check(run, scratch, figures)
        history.append((what, k, [p.name for p in partial]))
        assert k == expected_k, (what, history)
        figures["resume checks passed"] += 1

    # Finish without interruption.
    proc = spawn(run, resume=True, log=log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert ref_proc.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    final = rows(run / "metrics.jsonl")
    assert [r["step"] for r in final] == list(range(1, N_STEPS + 1)), history
    ex_steps = Counter(x["step"] for x in rows(run / "exchanges.jsonl"))
    assert ex_steps == Counter({s: LOG_EXCHANGES for s in range(1, N_STEPS + 1)})
    assert json.loads((run / "summary.json").read_text())["last_step"] == N_STEPS
    assert max(complete_checkpoints(run)) == N_STEPS
    assert not temp_checkpoints(run), "temporary checkpoint folders left behind"
    assert pool_dump(run / "pool.sqlite") == pool_dump(run / "checkpoints" / f"step-{N_STEPS:06d}" / "pool.sqlite")
    leftovers = [p.name for p in run.iterdir() if p.name.endswith((".tmp", "-journal", "-wal"))]
    assert not leftovers, leftovers

    # Nothing lost, nothing silently different: the crashed-and-resumed run equals the reference.
    ref = rows(reference / "metrics.jsonl")
    for a, b in zip(ref, final):
        for key in (
            "reward/attacker",
            "reward/defender",
            "loss",
            "pool/size",
            "pool/admitted_total",
            "pool/replays_total",
            "judge_invalid",
        ):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert pool_dump(run / "pool.sqlite") == pool_dump(reference / "pool.sqlite")
    wa = load_file(reference / "checkpoints" / f"step-{N_STEPS:06d}" / "weights" / "adapter_model.safetensors")
    wb = load_file(run / "checkpoints" / f"step-{N_STEPS:06d}" / "weights" / "adapter_model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6)

    assert figures["kills"] == len(KILLS) and figures["torn checkpoints planted"] == TORN_PLANTED, (figures, history)
    figures["resumes"] = figures["kills"] + 1
    print("\nreliability figures (crash):", json.dumps(dict(figures), sort_keys=True))
    print("kill history (what, resumed from step, partial folders):", history)
