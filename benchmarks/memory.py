"""Peak memory (RSS) of one SSP step per preset, and one step's split into phases at the default config.

    python benchmarks/memory.py           # tiny, embedded + LoRA (default), embedded + full fine-tuning
    python benchmarks/memory.py --quick   # tiny preset only (CI)
    python benchmarks/memory.py --presets cpu_small --before-repo ../old-checkout   # the step before/after a change

`--before-repo DIR` also runs every preset with another checkout's code and configs (its `src/` on the path),
alternating before/after, and reports the per-phase speed-up (same preset file name in both checkouts).
The `cpu_small` preset (configs/cpu-small.yaml) runs 2 steps and reports the second (the first has no replay).

Each preset runs `python -m ssp train --config … --set run.max_steps=1` in its own subprocess
(model loading, the judge's embedder, one self-play step, the update, the replay bookkeeping and the
step-1 checkpoint included); its peak resident set size is `ru_maxrss` of RUSAGE_CHILDREN read in a
helper process whose only child is that run (the kernel's high-water mark for that process). The phase split
of that one step comes from
the run's metrics.jsonl (`time/attacker_generation`, `time/defender_generation`, `time/judging`,
`time/update`, `time/replay`, `time/step`); `startup_s` = the subprocess's wall time minus the step.
Headline keys: `peak_rss_mb_<preset>` and `step_s_default`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "memory"
PHASES = ["attacker_generation", "defender_generation", "judging", "update", "replay"]
PRESETS = {
    "tiny": {"config": "configs/tiny.yaml", "set": []},
    "tiny_full": {"config": "configs/tiny.yaml", "set": ["model.finetune=full"]},
    "default_lora": {"config": None, "set": []},
    "default_full": {"config": None, "set": ["model.finetune=full"]},
    "cpu_small": {"config": "configs/cpu-small.yaml", "set": [], "steps": 2},
}


def run_preset(name: str, workdir: Path, threads: int | None, timeout: float, repo: Path = common.REPO) -> dict:
    spec = PRESETS[name]
    out = workdir / name
    steps = spec.get("steps", 1)
    cmd = [
        sys.executable,
        "-m",
        "ssp",
        "train",
        "--output",
        str(out),
        "--quiet",
        "--set",
        f"run.max_steps={steps}",
        "--set",
        f"run.checkpoint_every={steps}",
        *sum((["--set", s] for s in spec["set"]), []),
    ]
    if spec["config"]:
        cmd += ["--config", str(repo / spec["config"])]
    if threads:
        cmd += ["--set", f"run.threads={threads}"]
    env = {**os.environ, "PYTHONPATH": str(repo / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    wall = time.perf_counter() - t
    rec: dict = {
        "preset": name,
        "repo": str(repo),
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": wall,
    }
    if proc.returncode != 0:
        rec["error"] = output[-2000:]
        return rec
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    step = rows[-1]
    rec["phases_s"] = {p: step.get(f"time/{p}") for p in PHASES}
    rec["step_s"] = step.get("time/step")
    rec["startup_and_checkpoint_s"] = wall - (rec["step_s"] or 0.0)
    rec["generated_tokens"] = step.get("generated_tokens")
    rec["update_tokens"] = step.get("update_tokens")
    rec["samples"] = {"attacker": step.get("samples/attacker"), "defender": step.get("samples/defender")}
    return rec


def child_main(name: str, workdir: str, threads: str, timeout: str, repo: str) -> None:
    """Helper process: runs one preset and adds the peak RSS of its (only) child."""
    import resource

    rec = run_preset(name, Path(workdir), int(threads) or None, float(timeout), Path(repo))
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(rec))


def measure(name: str, workdir: Path, threads: int | None, timeout: float, repo: Path = common.REPO) -> dict:
    cmd = [sys.executable, __file__, "--_child", name, str(workdir), str(threads or 0), str(timeout), str(repo)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"preset": name, "returncode": proc.returncode, "error": (proc.stdout + proc.stderr)[-2000:]}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        child_main(*argv[1:6])
        return {}
    p = common.base_parser(NAME, __doc__)
    p.add_argument(
        "--presets",
        nargs="+",
        default=None,
        choices=list(PRESETS),
        help="default: tiny default_lora default_full (quick: tiny)",
    )
    p.add_argument("--timeout", type=float, default=1200, help="seconds per preset")
    p.add_argument(
        "--before-repo",
        type=Path,
        default=None,
        help="another checkout: run each preset with its code and configs too (before/after)",
    )
    args = p.parse_args(argv)
    machine = common.machine_info()
    common.print_machine(machine)
    presets = args.presets or (["tiny"] if args.quick else ["tiny", "default_lora", "default_full"])
    t_start = time.perf_counter()
    results, comparisons = [], []
    with tempfile.TemporaryDirectory(prefix="ssp-bench-mem-") as tmp:
        for name in presets:
            print(f"[{name}] one SSP step in a subprocess ...", flush=True)
            if args.before_repo is not None:
                before = measure(name, Path(tmp) / "before", args.threads, args.timeout, args.before_repo.resolve())
                if "error" in before:
                    print(f"[{name}] before: failed:\n{before['error']}")
                comparisons.append(before)
            rec = measure(name, Path(tmp), args.threads, args.timeout)
            if "error" in rec:
                print(f"[{name}] failed:\n{rec['error']}")
            results.append(rec)

    headline = {f"peak_rss_mb_{r['preset']}": r.get("peak_rss_mb") for r in results}
    default = next((r for r in results if r["preset"] == "default_lora" and "error" not in r), None)
    if default is not None:
        headline["step_s_default"] = default["step_s"]
    common.print_table(
        "Peak RSS of one SSP step (subprocess, includes model load and checkpoint)",
        ["preset", "peak RSS MB", "wall s", "step s", *PHASES],
        [
            [
                r["preset"],
                r.get("peak_rss_mb"),
                r.get("wall_s"),
                r.get("step_s"),
                *[(r.get("phases_s") or {}).get(ph) for ph in PHASES],
            ]
            for r in results
        ],
    )
    phase_split = None
    if default is not None:
        step = default["step_s"] or 0.0
        phase_split = {
            ph: {"s": default["phases_s"][ph], "share": (default["phases_s"][ph] or 0.0) / step if step else None}
            for ph in PHASES
        }
        other = step - sum(default["phases_s"][ph] or 0.0 for ph in PHASES)
        phase_split["other"] = {"s": other, "share": other / step if step else None}
        common.print_table(
            f"One SSP step at the default config (embedded, LoRA): {step:.1f} s",
            ["phase", "seconds", "share"],
            [[k, v["s"], v["share"]] for k, v in phase_split.items()],
        )
    before_after = None
    if comparisons:
        before_after = []
        for b, a in zip(comparisons, results):
            if "error" in b or "error" in a:
                continue
            row = {
                "preset": a["preset"],
                "before_repo": b["repo"],
                "step_s_before": b["step_s"],
                "step_s_after": a["step_s"],
                "step_speedup": b["step_s"] / a["step_s"],
                "phases_before": b["phases_s"],
                "phases_after": a["phases_s"],
                "peak_rss_mb_before": b.get("peak_rss_mb"),
                "peak_rss_mb_after": a.get("peak_rss_mb"),
            }
            before_after.append(row)
            headline[f"step_speedup_{a['preset']}"] = row["step_speedup"]
            common.print_table(
                f"{a['preset']}: one step before ({b['repo']}) and after: {row['step_speedup']:.2f}x",
                ["phase", "before s", "after s", "speed-up"],
                [
                    [
                        ph,
                        b["phases_s"][ph],
                        a["phases_s"][ph],
                        (b["phases_s"][ph] / a["phases_s"][ph]) if b["phases_s"][ph] and a["phases_s"][ph] else None,
                    ]
                    for ph in PHASES
                ]
                + [["step", b["step_s"], a["step_s"], row["step_speedup"]]],
            )
    settings = {
        "presets": {n: PRESETS[n] for n in presets},
        "steps": {n: PRESETS[n].get("steps", 1) for n in presets},
        "threads": args.threads,
        "quick": args.quick,
        "peak_rss": "ru_maxrss of the `ssp train` subprocess (RUSAGE_CHILDREN in a helper that runs only it)",
        "wall_s": time.perf_counter() - t_start,
    }
    payload = common.write_results(
        args.output,
        NAME,
        headline,
        machine,
        settings,
        results,
        phase_split_default=phase_split,
        before_after=before_after,
        before_results=comparisons or None,
    )
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
