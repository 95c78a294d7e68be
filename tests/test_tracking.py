"""Experiment trackers (`run.report_to`): TensorBoard events and a W&B offline run hold what metrics.jsonl holds."""

import json
import time

import pytest
from tests.conftest import REPO

from ssp.config import ConfigError, load_config
from ssp.training import tracking
from ssp.training.trainer import Trainer

TINY = str(REPO / "configs" / "tiny.yaml")


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(run):
    """{tag: [(step, value), ...]} from the run's TensorBoard event files, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / tracking.TENSORBOARD_DIR / "ssp"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(rows):
    """The tracker's view of metrics.jsonl: every numeric value (booleans as 0/1) at its step."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(k, {})[row["step"]] = float(v)
    return out


def assert_same(tb, rows):
    want = expected(rows)
    assert set(tb) == set(want), set(tb) ^ set(want)
    for tag, by_step in want.items():
        assert [step for step, _ in tb[tag]] == list(by_step), tag  # one event per step, in order
        for step, value in tb[tag]:
            assert value == pytest.approx(by_step[step], rel=1e-6), (tag, step)  # events store float32


def test_tensorboard_events_match_metrics_and_resume_purges_replayed_steps(tmp_path, one_torch_thread):
    run = tmp_path / "run"
    cfg = load_config(TINY, ["run.max_steps=2", "run.checkpoint_every=1", "run.report_to=tensorboard"])
    Trainer(cfg, run, progress=False).train()
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    tb = scalars(run)
    assert "reward/defender" in tb and "pool/size" in tb and "update_skipped" in tb
    assert_same(tb, rows)
    # The config is logged as hyperparameters (accelerate also keeps them as hparams.yml).
    (hparams,) = (run / tracking.TENSORBOARD_DIR / "ssp").glob("*/hparams.yml")
    assert "model.lora.r: 16" in hparams.read_text() and "run.report_to: '[\"tensorboard\"]'" in hparams.read_text()

    # Crash after step 2 was logged but before its checkpoint: resume from step 1 replays step 2; the
    # tracker shows the replayed values, not both.
    (run / "checkpoints" / "step-000002" / "manifest.json").unlink()
    Trainer(
        load_config(TINY, ["run.max_steps=3", "run.checkpoint_every=1", "run.report_to=tensorboard"]),
        run,
        resume=True,
        progress=False,
    ).train()
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert_same(scalars(run), rows)


def test_wandb_offline_writes_its_run_folder_and_resume_keeps_the_run(tmp_path, monkeypatch, one_torch_thread):
    wandb_dir = tmp_path / "wandb-home"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = load_config(TINY, ["run.max_steps=1", "run.checkpoint_every=1", "run.report_to=[wandb]"])
    Trainer(cfg, run, progress=False).train()
    run_id = json.loads((run / tracking.STATE_FILE).read_text())["wandb_run_id"]
    (folder,) = (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}")
    # wandb ships no reader for its offline record file; its protobuf records hold keys and JSON values as text.
    # Its service process writes them asynchronously (run.finish() does not wait for the writer): poll.
    (row,) = metrics(run)
    want = [k.encode() for k, v in row.items() if k != "step" and isinstance(v, (int, float))]
    want += [json.dumps(row[k]).encode() for k in ("reward/defender", "loss")]  # logged values
    want.append(b"model.lora.r")  # the flattened config
    record_file, deadline = folder / f"run-{run_id}.wandb", time.monotonic() + 60
    while [w for w in want if w not in record_file.read_bytes()] and time.monotonic() < deadline:
        time.sleep(0.5)
    data = record_file.read_bytes()
    assert [w for w in want if w not in data] == []

    Trainer(
        load_config(TINY, ["run.max_steps=2", "run.checkpoint_every=1", "run.report_to=[wandb]"]),
        run,
        resume=True,
        progress=False,
    ).train()
    assert json.loads((run / tracking.STATE_FILE).read_text())["wandb_run_id"] == run_id
    assert len(list((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1
    assert not [p for p in (wandb_dir / "wandb").glob("offline-run-*") if not p.name.endswith(run_id)]


def test_report_to_validation_and_missing_package(monkeypatch):
    assert load_config(TINY).run.report_to == ["none"]
    assert load_config(TINY, ["run.report_to=[tensorboard,wandb]"]).run.report_to == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(TINY, ["run.report_to=[none,wandb]"])
    with pytest.raises(ConfigError, match="report_to"):
        load_config(TINY, ["run.report_to=mlflow"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(tracking.TrackingError, match=r"trackio not installed; pip install trackio"):
        tracking.accelerator_kwargs(load_config(TINY, ["run.report_to=trackio"]), REPO)


@pytest.mark.timeout(900)
def test_two_processes_write_one_tensorboard_run_from_rank_0(tmp_path):
    from tests.test_distributed import _launch

    run = tmp_path / "run"
    rows, summary = _launch(2, run, ["--set", "run.max_steps=2", "--set", "run.report_to=tensorboard"])
    assert summary["world_size"] == 2
    assert len(list((run / tracking.TENSORBOARD_DIR / "ssp").glob("events.out.tfevents.*"))) == 1
    assert_same(scalars(run), rows)
