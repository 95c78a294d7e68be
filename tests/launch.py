"""Launching `ssp train` on the tiny model as one plain process or under `accelerate launch` (the scale-out
tests: data parallel, FSDP, DeepSpeed, two nodes), reading what a run wrote, and comparing final weights.

Rollouts are greedy, so a step's global batch does not depend on how it is split over ranks: runs with
different launchers must play the same game. Each test file says only its launcher options and checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tests.conftest import REPO


def sets(*assignments: str) -> list[str]:
    """`--set` options: sets("run.max_steps=2", ...)."""
    return [arg for a in assignments for arg in ("--set", a)]


# `ssp train` on the tiny model with greedy rollouts, on one thread per process.
TRAIN = ["-m", "ssp", "train", "-c", str(REPO / "configs" / "tiny.yaml"), "--quiet"] + sets(
    "rollout.attacker.temperature=0", "rollout.defender.temperature=0", "run.threads=1"
)
# Equal up to float summation order (the loss of a 2-rank run is a sum of two partial sums).
LOSS_TOL = dict(rel=1e-3, abs=1e-5)
WEIGHT_TOL = 1e-4
TIMEOUT = 600  # seconds for one launch


def free_port() -> int:
    """A port nothing listens on now, for the main process (parallel test sessions must not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preset(name: str) -> str:
    """A file of `configs/accelerate/`, the presets users launch with."""
    return str(REPO / "configs" / "accelerate" / name)


def accelerate(processes: int, *options: str, port: int | None = None) -> list[str]:
    """`accelerate launch --num_processes N --main_process_port P OPTIONS` as a command prefix."""
    main_port = str(port or free_port())
    return [
        *[sys.executable, "-m", "accelerate.commands.launch"],
        *["--num_processes", str(processes), "--main_process_port", main_port, *options],
    ]


def train_command(out: Path, *args: str, launcher: list[str] | None = None) -> list[str]:
    """`ssp train` on the tiny model, greedy, into `out`; a plain process without `launcher`."""
    return [*(launcher or [sys.executable]), *TRAIN, "-o", str(out), *args]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def read_run(out: Path) -> tuple[list[dict], dict]:
    """The rows of `metrics.jsonl` and `summary.json`."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def run_ok(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run a command from the repository root; it must succeed (else the tails of its output are the message)."""
    res = subprocess.run(command, capture_output=True, text=True, env=env or environment(), timeout=TIMEOUT, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


def run_to_end(command: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[list[dict], dict]:
    """Run `ssp train` to the end; its metrics rows and summary."""
    run_ok(command, env)
    return read_run(out)


def run_together(commands: list[list[str]], env: dict[str, str] | None = None) -> None:
    """Start all commands at once (the launchers of several nodes) and wait for each; all must succeed."""
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env=env or environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=TIMEOUT)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(log[-3000:] for log in logs)


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively (torch's launcher starts its workers in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def kill_when(command: list[str], path: Path, log: Path, env: dict[str, str] | None = None, timeout=300.0) -> None:
    """Start `command` and SIGKILL it, launcher and workers, as soon as `path` exists (mid-run)."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(command, cwd=REPO, env=env or environment(), stdout=f, stderr=f)
        try:
            end = time.monotonic() + timeout
            while not path.is_file():
                assert proc.poll() is None, f"the run ended before {path} was written: {log.read_text()[-3000:]}"
                assert time.monotonic() < end, f"no {path} after {timeout}s"
                time.sleep(0.1)
        finally:
            for pid in [proc.pid, *_descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


def final_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The weights saved at `step` (a peft adapter or a full model), consolidated."""
    folder = out / "checkpoints" / f"step-{step:06d}" / "weights"
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(f))
    assert weights, folder
    return weights


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)  # full (consolidated) tensors, not shards
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
