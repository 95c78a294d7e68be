"""Collect the CPU experiment's eval folders into docs/results/cpu-small.json and a Markdown table.

Usage: python scripts/cpu_results.py OUT.json NAME=EVAL_DIR [NAME=EVAL_DIR ...]
For each variant: ASR per attack on HarmBench standard behaviours, XSTest-safe refusal and benign
refusal, each with its Wilson 95% CI and n (read from the eval folders' results.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def headline(results: dict) -> dict:
    out: dict = {"asr": {}, "refusal": {}}
    for r in results["results"]:
        if r["kind"] == "harmful" and r["suite"].startswith("harmbench"):
            out["asr"][r["attack"]] = r["metrics"]["asr"]
        elif r["kind"] == "benign" and r["attack"] == "direct":
            out["refusal"][r["suite"]] = r["metrics"]["refusal_rate"]
    return out


def fmt(m: dict | None) -> str:
    if not m or m.get("rate") is None:
        return "–"
    return f"{100 * m['rate']:.0f}% [{100 * m['ci_low']:.0f}, {100 * m['ci_high']:.0f}] (n={m['n']})"


def main(argv: list[str]) -> None:
    out_path, pairs = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    table = {name: {"eval_dir": d, **headline(json.loads((Path(d) / "results.json").read_text()))} for name, d in pairs}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(table, indent=2))
    attacks = sorted({a for v in table.values() for a in v["asr"]})
    suites = sorted({s for v in table.values() for s in v["refusal"]})
    print("| variant | " + " | ".join(f"ASR {a}" for a in attacks) + " | " + " | ".join(f"refusal {s}" for s in suites) + " |")
    print("|---" * (1 + len(attacks) + len(suites)) + "|")
    for name, v in table.items():
        print(f"| {name} | " + " | ".join(fmt(v["asr"].get(a)) for a in attacks) + " | "
              + " | ".join(fmt(v["refusal"].get(s)) for s in suites) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
