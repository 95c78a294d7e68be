"""Shared helpers for the benchmark scripts: machine info, medians, result files, rich tables.

Every benchmark writes one JSON file with the same top-level layout:

    {"benchmark": NAME, "headline": {KEY: number, ...}, KEY: number, ...,
     "targets": {...}, "machine": {...}, "settings": {...}, "results": [...]}

The headline keys are repeated at the top level so `json["ratio_ssp_over_trl"]` works directly.
The machine may be shared with other jobs: `machine.loadavg_at_start` (1, 5, 15 min) says how
busy it was when the benchmark started, and `machine.loadavg_at_end` when it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

# On a shared machine (more runnable threads than cores) libgomp's default spin-waiting makes every
# parallel region wait for a descheduled worker: measured here, SmolLM2 generation ran 3-4x slower with
# 2 spinning threads than with OMP_WAIT_POLICY=PASSIVE (docs/performance.md). The benchmarks therefore
# default to PASSIVE; export OMP_WAIT_POLICY=ACTIVE (or anything else) before running to override.
# It must be set before torch (and so libgomp) is loaded: import this module first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

try:  # run from a checkout without `pip install -e .`
    import ssp  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(REPO / "src"))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """CPU, platform, library versions, torch thread counts and the load average right now."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "memory_gib": _memory_gib(),
        "versions": {d: _version(d) for d in ("torch", "transformers", "trl", "peft", "accelerate", "ssp")},
        "loadavg_at_start": loadavg(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        pass
    info["env_threads"] = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        if k in os.environ
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def stats(values: Iterable[float]) -> dict[str, Any]:
    """median / min / max / n of a list of measurements (seconds, tokens/s, ...)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


@contextmanager
def timer(out: dict, key: str):
    """Adds the elapsed wall time of the block to out[key]."""
    t = time.perf_counter()
    try:
        yield
    finally:
        out[key] = out.get(key, 0.0) + time.perf_counter() - t


def base_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke mode: tiny model, few repeats (seconds)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / f"{name}.json", help="result file (JSON)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return p


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def write_results(
    path: Path,
    name: str,
    headline: dict[str, Any],
    machine: dict[str, Any],
    settings: dict[str, Any],
    results: Any,
    **extra: Any,
) -> dict[str, Any]:
    machine = {**machine, "loadavg_at_end": loadavg()}
    payload = {
        "benchmark": name,
        "headline": headline,
        **headline,
        **extra,
        "machine": machine,
        "settings": settings,
        "results": results,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return payload


def _json_default(x: Any):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 10**-digits):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.1f}"
    return str(x)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on stdout (plain text when rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(fmt(v) for v in r))
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c not in columns[:1] else "left")
    for r in rows:
        table.add_row(*(fmt(v) for v in r))
    Console(width=max(100, min(200, 14 * len(columns) + 20))).print(table)


def print_machine(machine: dict[str, Any]) -> None:
    v = machine.get("versions", {})
    print(
        f"machine: {machine.get('cpu_count')} CPUs ({machine.get('processor')}), torch threads "
        f"{machine.get('torch_threads')}, load average at start {machine.get('loadavg_at_start')}; "
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, trl {v.get('trl')}, peft {v.get('peft')}"
    )
