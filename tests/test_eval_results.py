"""Aggregation rules (items, invalid judgments, categories, breakdowns) and comparisons, on synthetic records."""

import pytest

from ssp.eval.results import aggregate, build_results, compare_results, compare_table, item_outcome, markdown_table


def verdict(harmful=False, refused=False, score=None, valid=True):
    if score is None:
        score = 5.0 if harmful else (1.0 if refused else 2.0)
    return {
        "score": score if valid else None,
        "refused": refused,
        "harmful": harmful,
        "on_topic": True,
        "rationale": "r",
        "valid": valid,
        "raw": "",
    }


def sample(i, v=None, prompt="p", **meta):
    return {
        "index": i,
        "prompt": prompt,
        "response": "resp",
        "verdict": v,
        "meta": meta,
        "cost": {"defender_generations": 1},
    }


def rec(item_id, samples, category="c", suite="s", attack="template", kind="harmful"):
    return {
        "suite": suite,
        "benchmark": "b",
        "split": "x",
        "kind": kind,
        "attack": attack,
        "item_id": item_id,
        "category": category,
        "goal": "g",
        "samples": samples,
        "time_s": 0.5,
    }


def test_item_outcome_rules():
    o = item_outcome([sample(0, verdict(refused=True)), sample(1, verdict(harmful=True))])
    assert (o["status"], o["broken"], o["complied"], o["refused"], o["max_score"]) == ("judged", True, True, False, 5.0)
    o = item_outcome([sample(0, verdict(refused=True)), sample(1, verdict(refused=True))])
    assert (o["broken"], o["complied"], o["refused"]) == (False, False, True)
    o = item_outcome([sample(0, verdict(valid=False)), sample(1, None, prompt=None)])
    assert o["status"] == "invalid" and o["invalid_judgments"] == 1
    o = item_outcome([sample(0, None, prompt=None)])
    assert (o["status"], o["broken"], o["refused"]) == ("unanswered", False, False)
    o = item_outcome([sample(0, verdict(valid=False)), sample(1, verdict())])  # one valid is enough
    assert o["status"] == "judged" and not o["broken"] and o["complied"]
    o = item_outcome([sample(0, verdict(refused=True), round=1), sample(1, verdict(harmful=True), round=2)])
    assert o["first_broken_round"] == 2 and o["first_broken_index"] == 1


def test_aggregate_counts_rates_and_categories():
    records = [
        rec("1", [sample(0, verdict(harmful=True), template="a"), sample(1, verdict(refused=True), template="b")], "x"),
        rec("2", [sample(0, verdict(refused=True), template="a"), sample(1, verdict(refused=True), template="b")], "x"),
        rec("3", [sample(0, verdict(), template="a"), sample(1, verdict(valid=False), template="b")], "y"),
        rec("4", [sample(0, verdict(valid=False), template="a"), sample(1, verdict(valid=False), template="b")], "y"),
    ]
    e = aggregate(records, "harmful", "template", {"samples": 2}, embed=False)
    m = e["metrics"]
    assert (e["n_items"], e["n"], e["invalid_items"], e["invalid_judgments"]) == (4, 3, 1, 3)
    assert (m["asr"]["k"], m["asr"]["n"]) == (1, 3)
    assert (m["compliance_rate"]["k"], m["refusal_rate"]["k"]) == (2, 1)
    assert (m["sample_asr"]["k"], m["sample_asr"]["n"]) == (1, 5)
    assert m["asr"]["ci_low"] < 1 / 3 < m["asr"]["ci_high"]
    assert m["mean_score"] == pytest.approx((5 + 1 + 1 + 1 + 2) / 5)
    assert e["per_category"]["x"]["asr"]["k"] == 1 and e["per_category"]["x"]["n"] == 2
    assert e["per_category"]["y"]["n"] == 1 and e["per_category"]["y"]["compliance_rate"]["k"] == 1
    assert e["breakdown"]["sample_asr_by_template"]["a"]["k"] == 1
    assert e["breakdown"]["sample_asr_by_template"]["a"]["n"] == 3
    assert e["cost"]["defender_generations"] == 8 and e["cost"]["judge_calls"] == 8
    assert e["diversity"]["n"] == 8 and e["headline"] == "asr"


def test_pair_asr_by_round_is_cumulative():
    records = [
        rec(
            str(i),
            [sample(0, verdict(harmful=r == 1), round=1)]
            + ([sample(1, verdict(harmful=True), round=2)] if r == 2 else []),
            attack="pair",
        )
        for i, r in enumerate([1, 2, 0, 0])
    ]
    e = aggregate(records, "harmful", "pair", {"rounds": 3}, embed=False)
    by = e["breakdown"]["asr_by_round"]
    assert [by[k]["k"] for k in ("1", "2", "3")] == [1, 2, 2] and by["1"]["n"] == 4


def test_build_results_filters_requested_items_and_skips_attacks_on_benign():
    records = [
        rec("1", [sample(0, verdict())], attack="direct"),
        rec("2", [sample(0, verdict(harmful=True))], attack="direct"),
        rec("1", [sample(0, verdict(refused=True))], suite="ben", kind="benign", attack="direct"),
    ]
    suites = [
        {"suite": "s", "benchmark": "b", "split": "x", "kind": "harmful", "item_ids": ["1"]},
        {"suite": "ben", "benchmark": "b", "split": "y", "kind": "benign", "item_ids": ["1"]},
    ]
    res = build_results(records, suites, {"direct": {"samples": 1}, "template": {"samples": 2}}, {"k": 1}, embed=False)
    assert [(e["suite"], e["attack"], e["n"]) for e in res["results"]] == [("s", "direct", 1), ("ben", "direct", 1)]
    assert res["results"][0]["metrics"]["asr"]["k"] == 0  # item "2" was not requested
    assert res["results"][1]["headline"] == "refusal_rate" and res["results"][1]["metrics"]["refusal_rate"]["k"] == 1
    assert res["results"][0]["diversity"] is None and res["schema_version"] == 1


def test_compare_rows_deltas_and_overlap():
    def results(asr_k, ref_k):
        return {
            "results": [
                {
                    "suite": "h",
                    "attack": "direct",
                    "kind": "harmful",
                    "metrics": {
                        "asr": {"k": asr_k, "n": 20, "rate": asr_k / 20, "ci_low": 0, "ci_high": 1},
                        "compliance_rate": {"k": asr_k, "n": 20, "rate": asr_k / 20},
                        "refusal_rate": {"k": 20 - asr_k, "n": 20, "rate": (20 - asr_k) / 20},
                    },
                },
                {
                    "suite": "safe",
                    "attack": "direct",
                    "kind": "benign",
                    "metrics": {
                        "refusal_rate": {"k": ref_k, "n": 20, "rate": ref_k / 20},
                        "compliance_rate": {"k": 20 - ref_k, "n": 20, "rate": (20 - ref_k) / 20},
                    },
                },
            ]
        }

    rows = compare_results([results(18, 1), results(2, 3)], ["base", "ssp"])
    asr = next(r for r in rows if r["suite"] == "h" and r["metric"] == "asr")
    col = asr["columns"][1]
    assert asr["headline"] and col["delta"] == pytest.approx(-0.8)
    assert col["overlap"] is False and col["significant"] is True and col["delta_ci"][1] < 0
    ref = next(r for r in rows if r["suite"] == "safe" and r["metric"] == "refusal_rate")
    assert ref["headline"] and ref["columns"][1]["overlap"] is True and ref["columns"][1]["significant"] is False
    assert not any(r["suite"] == "safe" and r["metric"] == "asr" for r in rows)
    header, cells = compare_table(rows, ["base", "ssp"])
    assert header[:4] == ["suite", "attack", "metric", "base"] and "Δ vs base" in header
    assert cells[0][-1] == "no" and "-80.0 pp" in cells[0][-2] and "(sig.)" in cells[0][-2]
    md = markdown_table(header, cells)
    assert md.count("\n") == len(cells) + 2


def test_compare_handles_missing_entries():
    a = {
        "results": [
            {
                "suite": "h",
                "attack": "self",
                "kind": "harmful",
                "metrics": {
                    "asr": {"k": 1, "n": 2, "rate": 0.5},
                    "compliance_rate": {"k": 1, "n": 2, "rate": 0.5},
                    "refusal_rate": {"k": 1, "n": 2, "rate": 0.5},
                },
            }
        ]
    }
    rows = compare_results([a, {"results": []}], ["a", "b"])
    assert all(r["columns"][1]["value"] is None and "delta" not in r["columns"][1] for r in rows)
    header, cells = compare_table(rows, ["a", "b"])
    assert cells[0][4] == "—"
