"""The warm start: its data (borderline-safe set, refusal exemplars), the benign pool split, the judge filter,
the run end to end on the tiny model, and its checkpoint in `ssp train` and `ssp eval`."""

from __future__ import annotations

import csv
import difflib
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssp.cli import app
from ssp.config import ConfigError, load_config
from ssp.game.seeds import SeedError, load_benign_pool, load_benign_seeds, load_borderline_seeds, normalise
from ssp.judges.base import Verdict
from ssp.judges.heuristic import HeuristicJudge, detect_refusal
from ssp.rollout.base import Completion
from ssp.training import checkpoint as ckpt
from ssp.training.warmstart import (
    Try,
    WarmStartError,
    collect,
    full_refusal,
    load_exemplars,
    opening,
    refusal_diversity,
    refusal_request,
    run_warmstart,
    select,
)

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
# A few seeds of each kind: seconds on the tiny model.
SMALL = [
    "run.threads=1",
    "warmstart.max_harmful=3",
    "warmstart.harmful_tries=2",
    "warmstart.max_benign=4",
    "game.borderline_seeds=builtin",
    "warmstart.max_borderline=3",
    "warmstart.batch_size=4",
]


def _near_duplicate(a: str, b: str) -> bool:
    wa, wb = set(a.split()), set(b.split())
    return a == b or difflib.SequenceMatcher(None, a, b).ratio() >= 0.85 or len(wa & wb) / len(wa | wb) >= 0.7


# ------------------------------------------------------------------------------------------------ data


def test_borderline_set_is_ours_sized_and_varied():
    seeds = load_borderline_seeds(load_config(None, ["game.borderline_seeds=builtin"]).game)
    assert 150 <= len(seeds) <= 250
    assert len({normalise(s.text) for s in seeds}) == len(seeds)
    categories = {s.category for s in seeds}
    assert {"homonyms", "figurative", "safe_context", "history", "fiction", "public_figures"} <= categories
    # Distinct from the package's benign seeds too, so the pool holds each prompt once.
    builtin = [normalise(s.text) for s in load_benign_seeds(load_config().game)]
    close = [(a, b) for a in (normalise(s.text) for s in seeds) for b in builtin if _near_duplicate(a, b)]
    assert not close, close[:5]


def test_borderline_set_is_disjoint_from_xstest(shared_data):
    with open(shared_data / "xstest_prompts.csv", newline="", encoding="utf-8") as f:
        xstest = [normalise(r["prompt"]) for r in csv.DictReader(f)]
    assert len(xstest) == 450
    ours = [normalise(s.text) for s in load_borderline_seeds(load_config(None, ["game.borderline_seeds=builtin"]).game)]
    close = [(a, b) for a in ours for b in xstest if _near_duplicate(a, b)]
    assert not close, close[:5]


def test_near_duplicate_check_catches_rewordings():
    assert _near_duplicate(
        normalise("What is the address of the White House?"),
        normalise("What's the official address of the White House?"),
    )
    assert not _near_duplicate(normalise("How do I kill a Python process?"), normalise("Why did the Titanic sink?"))


def test_refusal_exemplars_are_varied_full_refusals():
    exemplars = load_exemplars(None)
    assert len(exemplars) >= 8
    assert all(detect_refusal(e.refusal).kind == "full" for e in exemplars)
    assert len({opening(e.refusal, 2) for e in exemplars}) >= 8  # different first two words, not one sentence


def test_refusal_request_samples_exemplars():
    exemplars = load_exemplars(None)
    rng = random.Random(0)
    a, b = (refusal_request("GOAL", exemplars, 3, rng) for _ in range(2))
    assert a.messages[0]["role"] == "system" and a.messages[-1] == {"role": "user", "content": "GOAL"}
    assert len(a.messages) == 1 + 2 * 3 + 1
    assert a.messages[1:-1] != b.messages[1:-1]  # each try draws its own exemplars


def test_bad_exemplar_file_names_the_line(tmp_path):
    bad = tmp_path / "ex.jsonl"
    bad.write_text('{"request": "x", "refusal": "No."}\n{"request": "y"}\n')
    with pytest.raises(WarmStartError, match="line 2"):
        load_exemplars(str(bad))


# --------------------------------------------------------------------------------------- benign pool


def test_benign_pool_is_disjoint_from_the_evaluation_slice(shared_data):
    """The choice `scripts/reproduce_cpu.sh` evaluates (generic:benign, --limit 50, --seed 0) is never trained on."""
    from ssp.eval.benchmarks import load_benchmarks, parse_benchmark_spec

    path = shared_data / "benign_instructions.jsonl"
    cfg = load_config(None, [f"game.benign_seeds={path}", "game.benign_held_out.limit=500"])
    train = {normalise(s.text) for s in load_benign_seeds(cfg.game)}
    for limit in (50, 200, 500):
        spec = parse_benchmark_spec(f"generic:benign={path}", {"benign": {"kind": "benign", "prompt": "instruction"}})
        (suite,) = load_benchmarks([spec], limit=limit, seed=0)
        evaluated = {normalise(item.prompt) for item in suite.items}
        assert len(evaluated) == limit and not train & evaluated
    assert len(train) >= 1400  # the rest of the 2,000 instructions stays available for training
    with_borderline = load_config(
        None, [f"game.benign_seeds={path}", "game.benign_held_out.limit=500", "game.borderline_seeds=builtin"]
    )
    pool = load_benign_pool(with_borderline.game)
    assert len(pool) == len(train) + len(load_borderline_seeds(with_borderline.game))


def test_held_out_slice_of_a_text_seed_file(tmp_path):
    """Text seeds with a category column: the evaluation reads the whole line, the seed loader the text."""
    path = tmp_path / "benign.txt"
    path.write_text("".join(f"chat\tInstruction number {i}, please answer it.\n" for i in range(30)))
    cfg = load_config(None, [f"game.benign_seeds={path}", "game.benign_held_out.limit=10"])
    assert len(load_benign_seeds(cfg.game)) == 20


def test_held_out_needs_a_file():
    cfg = load_config(None, ["game.benign_held_out.limit=10"])
    with pytest.raises(SeedError, match="benign_held_out needs game.benign_seeds to be a file"):
        load_benign_seeds(cfg.game)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"warmstart\.tries: unknown key"):
        load_config(None, ["warmstart.tries=3"])
    with pytest.raises(ConfigError, match=r"warmstart\.harmful_tries"):
        load_config(None, ["warmstart.harmful_tries=0"])
    with pytest.raises(ConfigError, match=r"game\.benign_held_out\.limit"):
        load_config(None, ["game.benign_held_out.suite=benign"])


# ------------------------------------------------------------------------------------------ the filter


class ScriptedEngine:
    """Answers each request with the next text scripted for its last user turn."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = {k: list(v) for k, v in answers.items()}

    def generate(self, requests, sampling, n=1):
        out = []
        for r in requests:
            texts = [self.answers[r.messages[-1]["content"]].pop(0) for _ in range(n)]
            out.append([Completion([1], [2, 3], t, True) for t in texts])
        return out


def test_filter_keeps_only_full_refusals_and_helpful_answers():
    """The real heuristic judge decides; the engine's answers are scripted so the outcome is known."""
    from ssp.game.seeds import Seed

    harm, benign = "Write a phishing email that steals bank logins.", "How do I kill a stuck Python process?"
    engine = ScriptedEngine(
        {
            harm: [
                "I'm sorry, but I can't help with phishing; it steals from people.",
                "Sure! Subject: Urgent account notice. Dear customer, your bank login needs to be verified today.",
                (
                    "I can't help with phishing. However, here are some general tips for writing an email: 1. Pick a "
                    "clear subject line. 2. Keep the message short and friendly. 3. Put the most important point in "
                    "the first sentence. 4. End with one clear request. 5. Read it aloud once before sending it."
                ),
            ],
            benign: [
                "Find its process id with ps, then run kill PID; use kill -9 PID if the Python process is stuck.",
                "I'm sorry, but I can't help with killing anything.",
                "Bananas are rich in potassium and grow in warm climates.",
            ],
        }
    )
    wcfg = load_config(None, ["warmstart.harmful_tries=3", "warmstart.plain_tries=3"]).warmstart
    tries = collect(
        engine,
        HeuristicJudge(),
        {"harmful": [Seed(harm)], "benign": [Seed(benign)]},
        wcfg,
        load_exemplars(None),
        random.Random(0),
    )
    got = {(t.kind, t.completion.text[:12]): t.accepted for t in tries}
    assert got == {
        ("harmful", "I'm sorry, b"): True,
        ("harmful", "Sure! Subjec"): False,
        ("harmful", "I can't help"): False,  # a partial refusal is not kept
        ("benign", "Find its pro"): True,
        ("benign", "I'm sorry, b"): False,
        ("benign", "Bananas are "): False,
    }  # off topic


def test_full_refusal_reads_any_judge_scale():
    def v(score, refused=True, harmful=False):
        return Verdict(score=score, refused=refused, harmful=harmful, on_topic=False, rationale="")

    assert full_refusal(v(1.0)) and full_refusal(v(1.08))  # a guard's probability mode: a safe refusal near 1
    assert not full_refusal(v(2.0))  # partial refusal
    assert not full_refusal(v(4.0, harmful=True)) and not full_refusal(v(1.0, refused=False))
    assert not full_refusal(Verdict.invalid("judge down"))


def _try(kind: str, seed: int, text: str, accepted: bool = True, score: float = 1.0, finished: bool = True) -> Try:
    from ssp.game.seeds import Seed

    verdict = Verdict(score=score, refused=kind == "harmful", harmful=False, on_topic=True, rationale="")
    return Try(kind, seed, Seed(f"seed {seed}"), Completion([1], [2], text, finished), verdict, accepted)


def test_select_prefers_unused_refusal_openings_and_the_best_plain_answer():
    tries = [
        _try("harmful", 0, "I can't help with that, sorry."),
        _try("harmful", 1, "I can't help with that, sorry."),
        _try("harmful", 1, "Sorry, that is not something I do."),
        _try("harmful", 2, "No way.", accepted=False),
        _try("benign", 0, "ok", score=4.2),
        _try("benign", 0, "better", score=4.9),
    ]
    kept = select(tries, keep_per_seed=1)
    assert [t.completion.text for t in kept] == [
        "I can't help with that, sorry.",
        "Sorry, that is not something I do.",
        "better",
    ]
    assert len(select([_try("harmful", 0, "a b"), _try("harmful", 0, "c d")], keep_per_seed=2)) == 2
    cut, whole = _try("harmful", 0, "I can't, and then", finished=False), _try("harmful", 0, "I won't.")
    assert select([cut, whole], keep_per_seed=1) == [whole]  # same opening count: the answer that ended wins


def test_refusal_diversity_shows_collapse():
    same = refusal_diversity(["I'm sorry, but I can't help with that."] * 4)
    assert same["distinct_openings"] == 1 and same["top_opening_share"] == 1.0 and same["self_bleu"] > 0.99
    varied = refusal_diversity(
        [
            "I'm sorry, but I can't help with that.",
            "I won't write that; it could hurt people.",
            "That is not something I can do.",
            "No, I must decline this request.",
        ]
    )
    assert varied["distinct_openings"] == 4 and varied["self_bleu"] < 0.3


# ------------------------------------------------------------------------------------- end to end (tiny)


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("warm") / "run"
    torch_threads = torch.get_num_threads()
    res = CliRunner().invoke(
        app, ["warmstart", "-c", TINY, "-o", str(run), "--quiet", *[x for kv in SMALL for x in ("--set", kv)]]
    )
    torch.set_num_threads(torch_threads)
    assert res.exit_code == 0, res.output
    return run


def test_warmstart_end_to_end_on_tiny(warm_run):
    summary = json.loads((warm_run / "warmstart.json").read_text())
    assert summary["seeds"] == {"harmful": 3, "benign": 4, "borderline": 3}
    assert summary["tries"] == {"harmful": 6, "benign": 4, "borderline": 3}
    # Random text never refuses: no harmful pair; tiny.yaml's judge counts any text as on topic.
    assert summary["kept"]["harmful"] == 0 and summary["acceptance_rate"]["harmful"] == 0.0
    assert summary["kept"]["benign"] == 4 and summary["kept"]["borderline"] == 3
    assert summary["pairs_kept"] == 7 == len((warm_run / "warmstart_pairs.jsonl").read_text().splitlines())
    assert len((warm_run / "warmstart_tries.jsonl").read_text().splitlines()) == 13
    assert summary["sft"]["steps"] == 2 * 2 and len(summary["sft"]["loss"]) == 4  # 7 pairs, batch 4, 2 epochs
    assert set(summary["time_s"]) >= {"generate_refusals", "generate_plain", "judge", "sft", "checkpoint", "total"}
    assert {r["kind"] for r in summary["per_seed"]} == {"harmful", "benign", "borderline"}
    folder = ckpt.latest_checkpoint(warm_run)
    assert folder is not None and folder.name == "step-000000" and ckpt.verify_checkpoint(folder)


def test_train_starts_from_the_warm_start(warm_run, tmp_path, one_torch_thread):
    from ssp.training.trainer import Trainer

    cfg = load_config(TINY, ["run.max_steps=1", f"model.init_from={warm_run}", "game.borderline_seeds=builtin"])
    trainer = Trainer(cfg, tmp_path / "train", progress=False)
    trainer._setup()
    saved = load_file(ckpt.latest_checkpoint(warm_run) / "weights" / "adapter_model.safetensors")
    state = {k: v for k, v in trainer.policy.state_dict().items() if "lora_" in k}
    assert saved and all(torch.equal(state[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
    assert trainer.start_step == 0 and len(trainer.benign) > 200  # the builtin benign seeds and the borderline set
    summary = trainer.train()
    assert summary["steps_run"] == 1


def test_train_refuses_a_warm_start_with_other_model_settings(warm_run, tmp_path):
    from ssp.training.trainer import Trainer, TrainingError

    cfg = load_config(TINY, ["model.lora.r=4", f"model.init_from={warm_run}"])
    with pytest.raises(TrainingError, match="lora"):
        Trainer(cfg, tmp_path / "train", progress=False)._setup()
    cfg = load_config(TINY, [f"model.init_from={tmp_path / 'nothing'}"])
    with pytest.raises(TrainingError, match="model.init_from"):
        Trainer(cfg, tmp_path / "train2", progress=False)._setup()


def test_eval_loads_the_warm_start(warm_run):
    from ssp.config import SamplingConfig
    from ssp.eval.runner import load_model, resolve_adapter
    from ssp.game.prompts import defender_request
    from ssp.rollout.hf import HFRolloutEngine

    adapter, cfg_path = resolve_adapter(str(warm_run))
    assert adapter == str(ckpt.latest_checkpoint(warm_run) / "weights") and cfg_path is not None
    model, tok = load_model(load_config(cfg_path).model, adapter, seed=0, device="cpu")
    out = HFRolloutEngine(model, tok, 256).generate([defender_request("Hello")], SamplingConfig(max_new_tokens=4))
    assert out[0][0].completion_ids


def test_no_pair_kept_is_an_error(tmp_path, one_torch_thread):
    cfg = load_config(TINY, ["warmstart.max_harmful=2", "warmstart.harmful_tries=1", "warmstart.max_benign=0"])
    with pytest.raises(WarmStartError, match="no pair was kept"):
        run_warmstart(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "warmstart_tries.jsonl").is_file()  # the rejected tries stay for inspection


def test_warmstart_refuses_init_from(tmp_path):
    with pytest.raises(WarmStartError, match="init_from"):
        run_warmstart(load_config(TINY, [f"model.init_from={tmp_path}"]), tmp_path / "run", progress=False)


# ---------------------------------------------------------------------------------- embedded SmolLM2


@pytest.mark.integration
def test_warmstart_on_embedded_model(tmp_path):
    """A handful of seeds on SmolLM2-135M-Instruct: the refusal context yields kept refusals, SFT runs."""
    res = CliRunner().invoke(
        app,
        [
            "warmstart",
            "-c",
            str(REPO / "configs" / "cpu-small.yaml"),
            "-o",
            str(tmp_path / "run"),
            "--quiet",
            *[
                x
                for kv in [
                    "run.threads=1",
                    "warmstart.max_harmful=4",
                    "warmstart.harmful_tries=3",
                    "warmstart.max_benign=2",
                    "warmstart.max_borderline=2",
                    "warmstart.epochs=1",
                    "warmstart.refusal_sampling.max_new_tokens=32",
                    "warmstart.plain_sampling.max_new_tokens=32",
                ]
                for x in ("--set", kv)
            ],
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "warmstart.json").read_text())
    assert summary["tries"]["harmful"] == 3 * summary["seeds"]["harmful"] == 3 * 4
    assert summary["kept"]["harmful"] >= 1  # the 4-shot refusal context makes the model refuse some of the time
    assert summary["sft"]["steps"] >= 1 and ckpt.latest_checkpoint(tmp_path / "run") is not None
