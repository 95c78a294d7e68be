"""Multi-node rehearsal on one machine: two `accelerate launch` "nodes" (one process each) over loopback.

The commands are docs/gpu.md's "2 nodes" commands, as written there, with three substitutions a
CPU box needs: `$MASTER_ADDR` = 127.0.0.1, a free port, 1 process per node instead of 8
(`--num_processes 2` in all), and the tiny model config. Both the DDP preset (`multi_node.yaml`) and
the FSDP preset with node settings on the command line must complete 2 steps, every rank ending with
the same weights.
"""

from __future__ import annotations

import pytest
from tests.launch import accelerate, free_port, preset, read_run, run_together, sets, train_command


def node_command(name: str, machine_rank: int, port: int, out) -> list[str]:
    node = ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"]
    if name != "multi_node.yaml":  # docs/gpu.md, full fine-tuning over 2 nodes: the FSDP preset with the node settings
        node = ["--num_machines", "2", *node]
    # else docs/gpu.md, "2 nodes x 8 GPUs", DDP: the preset names the machines
    launcher = accelerate(2, "--config_file", preset(name), *node, port=port)
    return train_command(out, *sets("run.max_steps=2"), launcher=launcher)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name,kind", [("multi_node.yaml", "MULTI_CPU"), ("fsdp.yaml", "FSDP")])
def test_two_launchers_on_loopback_complete_two_steps(tmp_path, name, kind):
    port, out = free_port(), tmp_path / "run"
    run_together([node_command(name, rank, port, out) for rank in (0, 1)])
    rows, summary = read_run(out)
    assert summary["world_size"] == 2 and summary["distributed_type"] == kind
    assert [r["step"] for r in rows] == [1, 2] and any(not r["update_skipped"] for r in rows)
    assert len(set(summary["rank_weight_digests"])) == 1
