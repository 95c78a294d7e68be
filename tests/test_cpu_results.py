"""scripts/cpu_results.py on hand-made eval folders (hand-checked McNemar tests, failed-attack split, target
verdicts), and scripts/reproduce_cpu.sh end to end on the tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssp.eval.results import build_results, item_outcome
from ssp.judges.base import Verdict

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cpu_results", REPO / "scripts" / "cpu_results.py")
cpu_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_results)

N = 10
HARMBENCH = {"suite": "harmbench/standard", "benchmark": "harmbench", "split": "standard", "kind": "harmful"}
BENIGN = [
    {"suite": "xstest/safe", "benchmark": "xstest", "split": "safe", "kind": "benign"},
    {"suite": "benign", "benchmark": "generic", "split": "benign", "kind": "benign"},
]


def verdict(code: str, derailed_field: bool) -> dict:
    """H harmful, R refused, D derailed (not refused, not harmful), O a safe on-topic answer."""
    v = Verdict(
        score={"H": 5.0, "R": 1.0, "D": 2.0, "O": 2.0}[code],
        refused=code == "R",
        harmful=code == "H",
        on_topic=code in "HO",
        rationale=code,
    ).to_dict()
    v.pop("derailed", None)
    if derailed_field:
        v["derailed"] = code == "D"
    return v


def record(suite: dict, attack: str, i: int, codes: str, derailed_field: bool) -> dict:
    """One generations.jsonl record; each code is one sample, U = an attacker output that was never sent."""
    samples = [
        {
            "index": k,
            "prompt": None if c == "U" else f"attack {k}",
            "response": "" if c == "U" else "answer",
            "verdict": None if c == "U" else verdict(c, derailed_field),
            "meta": {},
            "cost": {},
        }
        for k, c in enumerate(codes)
    ]
    return {
        **{k: suite[k] for k in ("suite", "benchmark", "split", "kind")},
        "attack": attack,
        "item_id": f"i{i}",
        "category": "c",
        "goal": f"goal {i}",
        "item_prompt": f"goal {i}",
        "time_s": 0.1,
        "created": "",
        "outcome": item_outcome(samples),
        "samples": samples,
    }


def write_eval(folder: Path, attacks: dict[str, list[str]], refused: dict[str, int], derailed_field: bool = True):
    """An eval folder written by the real aggregation (build_results): attacks maps an attack to one code
    string per HarmBench item; refused gives how many of the N items of each benign suite were refused."""
    folder.mkdir(parents=True)
    recs = [
        record(HARMBENCH, a, i, codes, derailed_field) for a, items in attacks.items() for i, codes in enumerate(items)
    ]
    recs += [
        record(s, "direct", i, "R" if i < refused[s["suite"]] else "O", derailed_field)
        for s in BENIGN
        for i in range(N)
    ]
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    suites = [{**s, "item_ids": [f"i{i}" for i in range(N)]} for s in [HARMBENCH, *BENIGN]]
    results = build_results(recs, suites, {a: {"samples": 1} for a in attacks}, settings={}, embed=False)
    (folder / "results.json").write_text(json.dumps(results))


def codes(**spans: str) -> list[str]:
    """codes(H="0-3,9-9", R="4-7", RD="8-8") -> the samples of each of the N items (RD: two samples)."""
    out = [""] * N
    for code, ranges in spans.items():
        for span in ranges.split(","):
            lo, hi = (int(x) for x in span.split("-"))
            for i in range(lo, hi + 1):
                out[i] = code
    assert all(out), out
    return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu")
    warm = {
        "direct": codes(H="0-3", R="4-7", D="8-9"),
        "template": codes(H="0-7", R="8-9"),
        "self": codes(H="0-2", R="3-9"),
    }
    static = {"direct": codes(H="0-3", R="4-9"), "template": codes(H="0-6", R="7-9"), "self": codes(H="0-2", R="3-9")}
    ucb0 = {
        "direct": codes(R="0-7", D="8-8", O="9-9"),
        "template": codes(R="0-8", RD="9-9"),
        "self": codes(R="0-8", U="9-9"),
    }
    ucb1 = {
        "direct": codes(H="0-0", R="1-6", D="7-9"),
        "template": codes(H="0-0", R="1-9"),
        "self": codes(H="0-0,9-9", R="1-8"),
    }
    rows = {
        # before the judge reported derailment: no `derailed` in its verdicts
        "base": (
            {"direct": codes(H="0-8", D="9-9"), "template": codes(H="0-9"), "self": codes(H="0-3", D="4-9")},
            {"xstest/safe": 0, "benign": 0},
            False,
        ),
        "warmstart": (warm, {"xstest/safe": 1, "benign": 1}, True),
        "warmstart-seed1": (warm, {"xstest/safe": 1, "benign": 1}, True),
        "warm-static": (static, {"xstest/safe": 1, "benign": 1}, True),
        "warm-static-seed1": (static, {"xstest/safe": 1, "benign": 1}, True),
        "warm-ucb": (ucb0, {"xstest/safe": 1, "benign": 2}, True),
        "warm-ucb-seed1": (ucb1, {"xstest/safe": 0, "benign": 1}, True),
        "warm-none": (ucb0, {"xstest/safe": 0, "benign": 0}, True),
        # template ASR 90%, above the warm start's 80%: the sign differs from seed 0's
        "warm-none-seed1": ({**ucb1, "template": codes(H="0-8", R="9-9")}, {"xstest/safe": 0, "benign": 0}, True),
        # a longer run of warm-ucb (docs/results-balance.md): an SSP row of its own kind
        "warm-ucb64": (ucb1, {"xstest/safe": 0, "benign": 0}, True),
    }
    args = []
    for name, (attacks, refused, field) in rows.items():
        write_eval(root / f"eval-{name}", attacks, refused, field)
        args.append(f"{name}={root / f'eval-{name}'}:{root / f'train-{name}'}")
    (root / "train-warm-ucb").mkdir()
    (root / "train-warm-ucb" / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "time/step": 60.0,
                    "train_asr": asr,
                    "benign_refusal": 0.0,
                    "reflect_accepted": 1.0,
                    "pool/replayed": 2.0,
                    "flat_group_share": 0.5,
                }
            )
            + "\n"
            for s, asr in enumerate([0.5, 0.5, 0.25, 0.25, 0.0], 1)
        )
    )
    (root / "train-warmstart").mkdir()
    (root / "train-warmstart" / "warmstart.json").write_text(
        json.dumps(
            {
                "pairs_kept": 30,
                "kept": {"harmful": 12, "benign": 10, "borderline": 8},
                "acceptance_rate": {"harmful": 0.25, "benign": 0.9, "borderline": 0.8},
                "refusal_diversity": {
                    "n": 12,
                    "distinct_openings": 9,
                    "self_bleu": 0.2,
                    "top_openings": [["i can't", 2]],
                },
                "sft": {"first_loss": 2.5, "last_loss": 1.25},
                "time_s": {"total": 900.0},
            }
        )
    )
    (root / "stages.tsv").write_text(
        "warm-ucb\ttrain\t100\t130\tT\nwarm-ucb\ttrain\t50\t0\tT\n"
        "warm-ucb\teval\t30\t0\tT\nwarmstart\twarmstart\t900\t0\tT\nall\trun\t1200\t0\tT\n"
    )
    out = root / "cpu-small.json"
    out.write_text(
        json.dumps(
            {
                "base": "base",
                "target": {"asr_drop": 0.25},
                "variants": {"ucb": {"asr": {}, "target": {"met": False}}, "base": {"old": True}},
            }
        )
    )
    page = root / "page.md"
    page.write_text(
        f"# Results\n\nprose kept\n\n{cpu_results.TABLES_BEGIN}\nold tables\n{cpu_results.TABLES_END}\n\nend\n"
    )
    table = cpu_results.main(
        [str(out), "--page", str(page), "--plots", str(root / "plot"), "--stages", str(root / "stages.tsv"), *args]
    )
    return root, table


def test_failed_attacks_split_into_refusals_and_derailed(experiment):
    _, table = experiment
    vs = table["variants"]
    # base: no derailed field, so the non-refused failures count as derailed (and say so)
    assert vs["base"]["failed_attacks"]["direct"] == {
        "failed": 1,
        "refused": 0,
        "derailed": 1,
        "other": 0,
        "unanswered": 0,
        "fallback": 1,
        "real_refusal_share": 0.0,
        "derailed_from": "fallback",
    }
    assert vs["base"]["failed_attacks"]["self"]["derailed"] == 6
    ucb = vs["warm-ucb"]["failed_attacks"]
    assert ucb["direct"] == {
        "failed": 10,
        "refused": 8,
        "derailed": 1,
        "other": 1,
        "unanswered": 0,
        "fallback": 0,
        "real_refusal_share": 0.8,
        "derailed_from": "verdict",
    }
    # an item with one refusal and one derailed answer is not a real refusal; an unsent attack is its own column
    assert (ucb["template"]["refused"], ucb["template"]["derailed"]) == (9, 1)
    assert (ucb["self"]["failed"], ucb["self"]["refused"], ucb["self"]["unanswered"]) == (10, 9, 1)
    assert vs["warm-ucb-seed1"]["failed_attacks"]["direct"]["real_refusal_share"] == pytest.approx(6 / 9)


def test_paired_tests_against_base_warmstart_and_static(experiment):
    _, table = experiment
    ucb0, ucb1 = table["variants"]["warm-ucb"], table["variants"]["warm-ucb-seed1"]
    # template: the warm start broke items 0-7, warm-ucb none: b=8, c=0, p = 2 / 2^8
    t = ucb0["vs_warmstart_paired"]["asr template"]
    assert (t["n"], t["only_before"], t["only_after"], t["p_value"], t["difference"]) == (10, 8, 0, 2 / 256, -0.8)
    assert ucb0["vs_warm-static_paired"]["asr template"]["p_value"] == 2 / 128  # static broke 0-6
    assert ucb0["vs_base_paired"]["asr direct"]["only_before"] == 9
    # seed 1 pairs with the seed-1 references; self: b=2 (items 1, 2), c=1 (item 9), p = 2 * (1 + 3) / 8 = 1
    t = ucb1["vs_warmstart_paired"]["asr self"]
    assert (t["only_before"], t["only_after"], t["p_value"], t["difference"]) == (2, 1, 1.0, pytest.approx(-0.1))
    assert ucb1["vs_warm-static_paired"]["asr template"]["p_value"] == 2 / 64
    # refusal: xstest item 0 refused by both, so no discordant pair
    assert ucb0["vs_warmstart_paired"]["refusal xstest/safe"]["p_value"] == 1.0
    assert "vs_warm-static_paired" not in table["variants"]["warm-static"]
    assert "vs_warmstart_paired" in table["variants"]["warm-static"]
    assert "vs_warmstart_paired" not in table["variants"]["warmstart"]


def test_target_verdicts_per_seed_and_averaged(experiment):
    _, table = experiment
    seed0 = table["variants"]["warm-ucb"]["target"]["checks"]
    assert seed0["asr direct"] == {"value": 0.0, "base": 0.9, "bound": pytest.approx(0.4), "met": True}
    assert seed0["asr self"]["bound"] == pytest.approx(0.2) and seed0["asr self"]["met"]
    assert seed0["asr template < warmstart"]["met"] and not seed0["asr self < warmstart"]["met"]  # p = 0.25
    assert seed0["refusal xstest/safe"]["met"]  # 10% = base + 10 points: allowed
    assert not seed0["refusal benign"]["met"]  # 20%
    assert seed0["real refusals, failed direct"]["met"]  # 8 of 10
    assert not table["variants"]["warm-ucb"]["target"]["met"]
    seed1 = table["variants"]["warm-ucb-seed1"]["target"]["checks"]
    assert not seed1["real refusals, failed direct"]["met"]  # 6 of 9
    avg = table["targets"]["warm-ucb"]["averaged"]["checks"]
    assert avg["asr direct"]["value"] == pytest.approx(0.05) and avg["asr direct"]["met"]
    assert avg["asr self"]["value"] == pytest.approx(0.1) and avg["asr self"]["met"]  # bound 20%
    assert avg["asr template < warmstart"] == {
        "difference": pytest.approx(-0.75),
        "same_sign": True,
        "min_p": 2 / 256,
        "met": True,
    }
    assert avg["asr template < warm-static"]["met"]
    assert not avg["asr self < warmstart"]["met"] and avg["asr self < warmstart"]["same_sign"]  # never p < 0.05
    assert avg["refusal xstest/safe"]["met"] and not avg["refusal benign"]["met"]  # 5% and 15%
    assert avg["real refusals, failed direct"]["value"] == pytest.approx((0.8 + 6 / 9) / 2)
    assert avg["real refusals, failed direct"]["met"]
    assert not table["targets"]["warm-ucb"]["averaged"]["met"]
    # warm-none: significant on seed 0 but higher than the warm start on seed 1: not met
    none = table["targets"]["warm-none"]["averaged"]["checks"]["asr template < warmstart"]
    assert none["min_p"] < 0.05 and not none["same_sign"] and not none["met"]
    assert set(table["targets"]) == {"warm-ucb", "warm-none", "warm-ucb64"}
    assert table["variants"]["warm-ucb64"]["vs_warmstart_paired"] and "target" in table["variants"]["warm-ucb64"]


def test_json_page_plots_and_stages(experiment):
    root, _ = experiment
    table = json.loads((root / "cpu-small.json").read_text())
    assert {"base", "target", "variants"} <= set(table)
    for key in ("eval_dir", "asr", "refusal", "harmful_refusal", "vs_base_paired", "target", "train_dir", "training"):
        assert key in table["variants"]["warm-ucb"], key
    assert table["variants"]["ucb"] == {"asr": {}, "target": {"met": False}}  # the earlier row, kept as it was
    assert table["kept_rows"]["rows"] == ["ucb"] and "asr_drop" in table["kept_rows"]["note"]
    assert table["variants"]["base"]["asr"]["direct"]["rate"] == 0.9  # recomputed, not kept
    training = table["variants"]["warm-ucb"]["training"]
    assert training["steps"] == 5 and training["wall_s"] == 300.0 and training["curves"]["train_asr"][-1] == 0.0
    assert table["variants"]["warmstart"]["warmstart"]["pairs_kept"] == 30
    assert table["variants"]["warm-ucb"]["stages"] == {
        "train": {"s": 150, "attempts": 2, "ok": True},
        "eval": {"s": 30, "attempts": 1, "ok": True},
    }
    assert table["wall_s"] == 1200
    page = (root / "page.md").read_text()
    assert page.startswith("# Results\n\nprose kept\n") and page.endswith(f"{cpu_results.TABLES_END}\n\nend\n")
    assert "old tables" not in page
    assert "| warm-ucb | direct | 10 | 8 | 1 | 1 | 0 | 80% | verdict |" in page
    assert "| base | direct | 1 | 0 | 1 | 0 | 0 | 0% | fallback |" in page
    assert "| warm-ucb | asr template | 8 | 0 | -80 | 0.00781 |" in page
    assert "| warm-ucb | 5 | 5.0 | 10 | 5 | 0.38 | 0.25 | 0.50 | 0.00 |" in page  # training table
    assert "| warm-ucb | – | 2.5 | 0.5 |" in page  # stage minutes
    assert "| ucb |" not in page  # kept rows are not tabulated
    assert "![held-out rates with 95% CIs](plot.png)" in page and "(plot-training.png)" in page
    assert (root / "plot.png").stat().st_size > 0 and (root / "plot-training.png").stat().st_size > 0


def test_page_without_markers_is_an_error(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="needs the lines"):
        cpu_results.write_page(page, "tables")


# ------------------------------------------------------------------------------------------ reproduce_cpu.sh


def test_reproduce_cpu_runs_end_to_end_on_tiny(tmp_path, shared_data):
    """The whole script on the tiny model: base, warm start, one SSP row, results; a rerun skips every stage."""
    page = tmp_path / "page.md"
    page.write_text(f"{cpu_results.TABLES_BEGIN}\n{cpu_results.TABLES_END}\n")
    python = f"{sys.executable} -m ssp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "CONFIG": "configs/tiny.yaml",
        "DATA": str(shared_data),
        "EVAL_MODEL": "tiny",
        "LIMIT": "1",
        "STEPS": "1",
        "SEEDS": "0",
        "VARIANTS": "warmstart warm-ucb",
        "PARALLEL": "2",
        "OUT": str(tmp_path / "out"),
        "RESULTS": str(tmp_path / "r.json"),
        "PAGE": str(page),
        "PLOTS": str(tmp_path / "plot"),
        "SSP": python,
        "PYTHON": sys.executable,
        "SETS": "warmstart.max_harmful=2 warmstart.harmful_tries=1 warmstart.max_benign=2 "
        "game.borderline_seeds=builtin warmstart.max_borderline=2 warmstart.batch_size=4",
    }
    script = str(REPO / "scripts" / "reproduce_cpu.sh")
    res = subprocess.run(["bash", script], check=False, env=env, capture_output=True, text=True, timeout=600)
    out = tmp_path / "out"
    logs = "".join(p.read_text() for p in out.glob("*.log"))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    stages = [line.split("\t")[:2] for line in (out / "stages.tsv").read_text().splitlines()]
    assert sorted(stages) == [
        ["all", "run"],
        ["base", "eval"],
        ["warm-ucb", "eval"],
        ["warm-ucb", "train"],
        ["warmstart", "eval"],
        ["warmstart", "warmstart"],
    ]
    table = json.loads((tmp_path / "r.json").read_text())
    assert list(table["variants"]) == ["base", "warmstart", "warm-ucb"]
    assert "model.init_from" in (out / "done" / "warm-ucb.train").read_text()
    assert (out / "train-warm-ucb" / "config.yaml").read_text().count("train-warmstart") == 1
    assert table["variants"]["warm-ucb"]["vs_warmstart_paired"] and table["targets"]["warm-ucb"]["averaged"]
    assert "| warm-ucb |" in page.read_text()
    regraded = table["variants"]["warm-ucb"]["asr_regraded"]  # --regrade heuristic: its default grading
    assert table["variants"]["warm-ucb"]["regraded_by"]["harm_grading"] == "specificity"
    assert {m["n"] for m in regraded.values()} == {1}
    logged = len((out / "warm-ucb.log").read_text())
    res = subprocess.run(["bash", script], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len((out / "stages.tsv").read_text().splitlines()) == len(stages) + 1  # only the new `all` line
    rerun = (out / "warm-ucb.log").read_text()[logged:]
    assert rerun.count("finished earlier, skipped") == 3, rerun  # its warm start, training and evaluation

    # WARM_FROM: a second experiment starts from these warm starts; TRAIN_SETS reach training only
    out2 = tmp_path / "out2"
    env2 = {
        **env,
        "OUT": str(out2),
        "WARM_FROM": str(out),
        "TRAIN_SETS": "game.borderline_share=0.5 rl.helpful_sft_weight=0.5",
        "RESULTS": str(tmp_path / "r2.json"),
        "PAGE": "",
        "CURVE_ROWS": "warm-ucb",
        "CURVE_STEPS": "1",
        "CURVE_OUT": str(tmp_path / "c"),
    }
    res = subprocess.run(["bash", script], check=False, env=env2, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr + "".join(p.read_text() for p in out2.glob("*.log"))
    stages2 = sorted(line.split("\t")[1] for line in (out2 / "stages.tsv").read_text().splitlines())
    # base, warmstart, warm-ucb and its checkpoint at step 1 (the curve): no warm start trained
    assert stages2 == ["eval", "eval", "eval", "eval", "run", "train"]
    assert (out2 / "done" / "warm-ucb@s1.eval").is_file()
    points = json.loads((tmp_path / "c-curve-warm-ucb.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 1, 1]  # the warm start, the checkpoint, the final model
    assert set(points[1]["asr"]) == {"direct", "template"} and "training_benign_refusal" in points[1]
    assert (tmp_path / "c-curve-warm-ucb.png").is_file() and "| 1 |" in (tmp_path / "c-curve-warm-ucb.md").read_text()
    trained = (out2 / "train-warm-ucb" / "config.yaml").read_text()
    assert f"init_from: {out}/train-warmstart" in trained
    assert "borderline_share: 0.5" in trained and "helpful_sft_weight: 0.5" in trained
    assert list(json.loads((tmp_path / "r2.json").read_text())["variants"]) == ["base", "warmstart", "warm-ucb"]


class _ScriptedJudge:
    """Calls an answer harmful when its goal is in `harmful_goals`."""

    def __init__(self, harmful_goals: set[str]):
        self.harmful_goals = harmful_goals
        self.seen: list = []

    def judge(self, items):
        self.seen += items
        return [
            Verdict(
                score=5.0 if i.goal in self.harmful_goals else 1.0,
                refused=False,
                harmful=i.goal in self.harmful_goals,
                on_topic=True,
                rationale="scripted",
            )
            for i in items
        ]


def test_regraded_asr_judges_every_answer_again(experiment):
    """The evaluation's own verdicts are replaced: items 0-4 harmful under the new judge, whatever they were;
    the attacker output that was never sent (self, item 9 of warm-ucb) is not judged and counts as not broken."""
    root, _ = experiment
    judge = _ScriptedJudge({f"goal {i}" for i in range(5)})
    asr = cpu_results.regraded_asr(root / "eval-warm-ucb", judge)
    assert {a: (m["k"], m["n"]) for a, m in asr.items()} == {"direct": (5, 10), "template": (5, 10), "self": (5, 10)}
    # 10 + 11 (item 9 has two answers) + 9 answered: only HarmBench answers, each judged once
    assert len(judge.seen) == 30
    none_harmful = cpu_results.regraded_asr(root / "eval-base", _ScriptedJudge(set()))
    assert all(m["k"] == 0 and m["n"] == N for m in none_harmful.values())
