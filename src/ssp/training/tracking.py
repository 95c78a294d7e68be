"""Experiment trackers (TensorBoard, Weights & Biases, trackio) through accelerate's tracker API.

metrics.jsonl stays the record of a run; the trackers named in `run.report_to` get the same row at the
same step, plus the run config as hyperparameters, from rank 0 only. A resumed run continues the same
tracker run where the tracker allows it: TensorBoard writes into the same folder and purges the events
logged after the checkpoint (they are played again); W&B reuses the run id kept in the run folder
(`resume="allow"`) and, since it cannot rewrite history, keeps its first values of replayed steps;
trackio resumes the run of the same name.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ssp.config import SSPConfig

STATE_FILE = "trackers.json"  # ids that let a resumed run continue the same tracker run
TENSORBOARD_DIR = "tensorboard"  # event files go to RUN/tensorboard/<run.tracker_project>/
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


class TrackingError(ValueError):
    """A tracker named in run.report_to cannot be used (its package is missing)."""


def enabled(cfg: SSPConfig) -> list[str]:
    return [t for t in cfg.run.report_to if t != "none"]


def accelerator_kwargs(cfg: SSPConfig, run_dir: Path) -> dict[str, Any]:
    """What `Accelerator(...)` needs for the configured trackers ({} when none)."""
    trackers = enabled(cfg)
    if not trackers:
        return {}
    missing = [t for t in trackers if importlib.util.find_spec(_MODULES[t]) is None]
    if missing:  # accelerate would drop them with only a debug message
        raise TrackingError(
            f"run.report_to={trackers}: {', '.join(missing)} not installed; "
            f"pip install {' '.join(missing)}  (or pip install 'ssp[track]')"
        )
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": trackers,
        "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / TENSORBOARD_DIR)),
    }


def start(accelerator, cfg: SSPConfig, run_dir: Path, start_step: int) -> None:
    """Open the tracker runs (rank 0): fresh ones at step 0, the same ones when resuming from `start_step`."""
    trackers = enabled(cfg)
    if not trackers or not accelerator.is_main_process:
        return
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if start_step and state_path.is_file() else {}
    init_kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in trackers:
        if start_step:
            init_kwargs["tensorboard"] = {"purge_step": start_step + 1}
        else:
            shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    if "wandb" in trackers:
        state.setdefault("wandb_run_id", uuid.uuid4().hex[:12])
        init_kwargs["wandb"] = {
            "id": state["wandb_run_id"],
            "resume": "allow",
            "name": run_dir.name,
            "dir": os.environ.get("WANDB_DIR") or str(run_dir),
        }
    if "trackio" in trackers:
        init_kwargs["trackio"] = {"name": state.setdefault("trackio_run_name", run_dir.name), "resume": "allow"}
    state_path.write_text(json.dumps(state, indent=2), encoding="utf-8")
    accelerator.init_trackers(cfg.run.tracker_project, config=flat_config(cfg), init_kwargs=init_kwargs)


def log(accelerator, row: dict[str, Any], step: int) -> None:
    """One metrics.jsonl row: numbers (booleans as 0/1); None and non-finite values are left out."""
    if not accelerator.trackers:
        return
    values = {
        k: int(v) if isinstance(v, bool) else v
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)
    }
    accelerator.log(values, step=step)


def finish(accelerator) -> None:
    """Close the tracker runs. Not `end_training()`: that also tears down the process group."""
    for tracker in accelerator.trackers:
        tracker.finish()


def flat_config(cfg: SSPConfig) -> dict[str, Any]:
    """The config as `section.key` -> scalar (lists, mappings and None as JSON text): TensorBoard's
    hyperparameters accept only scalars."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (bool, int, float, str)):
            out[prefix] = node
        else:
            out[prefix] = json.dumps(node)

    walk("", cfg.model_dump(mode="json"))
    return out
