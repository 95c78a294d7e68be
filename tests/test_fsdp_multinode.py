"""Multi-node rehearsal on one machine: two `accelerate launch` "nodes" (one process each) over loopback.

The commands are docs/gpu.md's "2 nodes" commands, as written there, with three substitutions a
CPU box needs: `$MASTER_ADDR` = 127.0.0.1, a free port, 1 process per node instead of 8
(`--num_processes 2` in all), and the tiny model config. Both the DDP preset (`multi_node.yaml`) and
the FSDP preset with node settings on the command line must complete 2 steps, every rank ending with
the same weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from tests.conftest import REPO

RUN = [
    "-m",
    "ssp",
    "train",
    "-c",
    str(REPO / "configs" / "tiny.yaml"),
    "--quiet",
    "--set",
    "run.max_steps=2",
    "--set",
    "rollout.attacker.temperature=0",
    "--set",
    "rollout.defender.temperature=0",
    "--set",
    "run.threads=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(preset: str, machine_rank: int, port: int, out) -> list[str]:
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / preset),
    ]
    if preset == "multi_node.yaml":  # docs/gpu.md, "2 nodes x 8 GPUs", DDP
        node = ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    else:  # docs/gpu.md, full fine-tuning over 2 nodes: the FSDP preset with the node settings
        node = [
            "--num_machines",
            "2",
            "--machine_rank",
            str(machine_rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
        ]
    return [*launcher, *node, "--num_processes", "2", *RUN, "-o", str(out)]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("preset,kind", [("multi_node.yaml", "MULTI_CPU"), ("fsdp.yaml", "FSDP")])
def test_two_launchers_on_loopback_complete_two_steps(tmp_path, preset, kind):
    port, out = _free_port(), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    nodes = [
        subprocess.Popen(
            node_command(preset, rank, port, out),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    for node in nodes:
        try:
            logs.append(node.communicate(timeout=600)[0])
        finally:
            if node.poll() is None:
                node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["world_size"] == 2 and summary["distributed_type"] == kind
    assert [r["step"] for r in rows] == [1, 2] and any(not r["update_skipped"] for r in rows)
    assert len(set(summary["rank_weight_digests"])) == 1
