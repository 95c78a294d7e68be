"""CPU cost of the embedded judges per exchange at batch 64 (issue 15 target: ≤ 20 ms on 2 CPU cores).

    python benchmarks/judge_speed.py                      # both XSTest completion files (900 exchanges)
    python benchmarks/judge_speed.py --quick              # the judge test fixtures (CI smoke run)
    python benchmarks/judge_speed.py --verdicts-out v.jsonl          # also record every verdict
    python benchmarks/judge_speed.py --verdicts-check v.jsonl        # ... and fail if any differs

Each judge (`heuristic` with topicality on, `learned` with its shipped model) judges the exchanges in
batches of `--batch` after one warm-up batch (the embedder is loaded by then). Reported per exchange:
wall clock, process CPU time, and CPU time / torch threads (what the wall clock would be on that many
otherwise idle cores; the target's unit). The machine may be shared: the load average is recorded, and
on a loaded machine only the comparison between runs in one process means much.

The exchanges: the XSTest completions (`--data-dir`, goal = prompt = the XSTest prompt) followed by the
judge test fixtures (tests/fixtures/judges: refusal cases with an empty goal, hand-labelled HarmBench
answers); `--quick` uses the fixtures only. `--verdicts-out` writes every field of every verdict (JSONL,
in order) so that a change to the judges can be checked for identical verdicts with `--verdicts-check`
on the same machine (the embeddings are not bit-identical across CPUs and library versions).
`--profile N` prints the N functions with the most own time per judge (cProfile).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "judge_speed"
TARGET_MS = 20.0
JUDGES = ("heuristic", "learned")
XSTEST = ("xstest_completions_llama2orig.csv", "xstest_completions_mistralinstruct.csv")
FIXTURES = common.REPO / "tests" / "fixtures" / "judges"


def load_exchanges(data_dir: Path | None) -> list:
    """(source, JudgeInput) pairs: the XSTest completions in `data_dir` (if given), then the fixtures."""
    from ssp.judges.base import JudgeInput

    out = []
    for name in XSTEST if data_dir is not None else ():
        with (data_dir / name).open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                item = JudgeInput(goal=r["prompt"], prompt=r["prompt"], response=r["completion"])
                out.append((f"{name}:{r['id']}", item))
    for i, line in enumerate((FIXTURES / "refusal_cases.jsonl").read_text(encoding="utf-8").splitlines()):
        out.append((f"refusal_cases:{i}", JudgeInput(goal="", prompt="", response=json.loads(line)["text"])))
    for i, line in enumerate((FIXTURES / "harm_labels.jsonl").read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        out.append((f"harm_labels:{i}", JudgeInput(goal=row["goal"], prompt=row["goal"], response=row["response"])))
    return out


def time_judge(judge, items: list, batch: int, threads: int, profile: int) -> tuple[dict, list]:
    """Verdicts of all items in batches, and the per-exchange timings (after one warm-up batch)."""
    judge.judge(items[:batch])
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    verdicts = [v for start in range(0, len(items), batch) for v in judge.judge(items[start : start + batch])]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if prof is not None:
        import pstats

        prof.disable()
        print(f"--- profile of {judge.name} (own time) ---")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(profile)
    n = len(items)
    timing = {
        "exchanges": n,
        "wall_ms": 1000 * wall / n,
        "cpu_ms": 1000 * cpu / n,
        "cpu_ms_per_thread": 1000 * cpu / n / threads,
    }
    return timing, verdicts


def verdict_rows(judge: str, sources: list[str], verdicts: list) -> list[dict]:
    return [{"judge": judge, "source": s, **v.to_dict()} for s, v in zip(sources, verdicts)]


def check_verdicts(path: Path, rows: list[dict]) -> list[str]:
    """Lines that describe each verdict differing from the recorded ones in `path` (JSON-compared)."""
    old = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # NaN (invalid verdicts) compares unequal to itself; compare the JSON text instead
    new = [json.loads(json.dumps(r)) for r in rows]
    if len(old) != len(new):
        return [f"{path}: {len(old)} recorded verdicts, {len(new)} now"]
    return [
        f"{n['judge']} {n['source']}: {k}: {o.get(k)!r} -> {n[k]!r}"
        for o, n in zip(old, new)
        for k in n
        if json.dumps(o.get(k)) != json.dumps(n[k])
    ]


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(NAME, __doc__)
    p.set_defaults(threads=2)
    p.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data", help="XSTest CSV files")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--judges", nargs="+", default=list(JUDGES), choices=JUDGES)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N exchanges")
    p.add_argument("--verdicts-out", type=Path, default=None, help="write every verdict here (JSONL)")
    p.add_argument("--verdicts-check", type=Path, default=None, help="fail if a verdict differs from this file")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N functions by own time")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    machine = common.machine_info()
    common.print_machine(machine)

    from ssp.judges import build_judge

    pairs = load_exchanges(None if args.quick else args.data_dir)[: args.limit]
    sources, items = [s for s, _ in pairs], [it for _, it in pairs]
    results, rows = [], []
    for name in args.judges:
        timing, verdicts = time_judge(build_judge(name), items, args.batch, args.threads, args.profile)
        results.append({"judge": name, **timing})
        rows += verdict_rows(name, sources, verdicts)
    common.print_table(
        f"judges at batch {args.batch}, {len(items)} exchanges, {args.threads} torch threads (ms per exchange)",
        ["judge", "wall", "CPU", "CPU / thread"],
        [[r["judge"], r["wall_ms"], r["cpu_ms"], r["cpu_ms_per_thread"]] for r in results],
    )
    headline = {f"{r['judge']}_ms_per_exchange": r["cpu_ms_per_thread"] for r in results}
    if args.verdicts_out:
        args.verdicts_out.parent.mkdir(parents=True, exist_ok=True)
        args.verdicts_out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    differences = check_verdicts(args.verdicts_check, rows) if args.verdicts_check else []
    for line in differences[:50]:
        print("verdict differs:", line)
    if args.verdicts_check:
        print(f"verdicts vs {args.verdicts_check}: {len(differences)} differences in {len(rows)} verdicts")
    payload = common.write_results(
        args.output,
        NAME,
        headline,
        machine,
        {"quick": args.quick, "batch": args.batch, "threads": args.threads, "exchanges": len(items)},
        results,
        targets={f"{j}_ms_per_exchange": TARGET_MS for j in args.judges},
        meets_targets=all(v <= TARGET_MS for v in headline.values()),
        verdict_differences=len(differences) if args.verdicts_check else None,
    )
    print(f"wrote {args.output}")
    if differences:
        sys.exit(1)
    return payload


if __name__ == "__main__":
    main()
