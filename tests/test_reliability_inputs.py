"""Bad input gets a clear error naming the file, line or field (issue 7 §4), and property-based tests:
arbitrary text never crashes the config loader, the seed loader or the attacker-output parser.

Every case is also counted (`CASES_TRIED`, printed at the end of the module) for docs/reliability.md.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.conftest import REPO
from typer.testing import CliRunner

from ssp.cli import app
from ssp.config import ConfigError, ModelConfig, SSPConfig, TinyModelConfig, load_config
from ssp.game.prompts import ATTACK_CLOSE, ATTACK_OPEN, parse_attack
from ssp.game.seeds import SeedError, load_seeds
from ssp.rollout.base import ChatRequest
from ssp.training import checkpoint as ckpt
from ssp.training.trainer import Trainer, TrainingError

TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["rollout.attacker.max_new_tokens=8", "rollout.defender.max_new_tokens=8"]
CASES_TRIED: Counter = Counter()


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """One torch thread for every test here (see conftest)."""


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    print("\nreliability figures (bad inputs):", json.dumps(dict(CASES_TRIED), sort_keys=True))


def cli(*args: str):
    # wide console: rich would otherwise wrap messages at 80 columns
    return CliRunner().invoke(app, ["train", *args], env={"COLUMNS": "2000"})


def sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


# ============================================================================ configuration files

CONFIG_CASES = {  # name -> (file text, fragments the error must contain besides the file name)
    "bad indentation": ("run:\n  max_steps: 2\n seed: 1\n", ["malformed YAML", "line 3"]),
    "unclosed bracket": ("run:\n  max_steps: 2\n  seed: [1, 2\n", ["malformed YAML", "line 4"]),
    "tab indentation": ("run:\n\tmax_steps: 2\n", ["malformed YAML", "line 2"]),
    "unknown section": ("modle:\n  name_or_path: tiny\n", ["modle: unknown key"]),
    "unknown nested key": ("rl:\n  learning_rat: 0.1\n", ["rl.learning_rat: unknown key"]),
    "unknown deep key": ("model:\n  lora:\n    rank: 8\n", ["model.lora.rank: unknown key"]),
    "wrong type": ("run:\n  max_steps: many\n", ["run.max_steps", "integer"]),
    "out of range": ("rl:\n  learning_rate: -1\n", ["rl.learning_rate", "greater than 0"]),
    "bad choice": ("replay:\n  mode: sometimes\n", ["replay.mode", "'ucb'"]),
    "section is a value": ("run: 5\n", ["run", "valid dictionary"]),
    "top level is a list": ("- a\n- b\n", ["top level must be a mapping"]),
    "top level is a scalar": ("hello\n", ["top level must be a mapping"]),
    "nothing to play": ("game:\n  goals_per_step: 0\n  benign_share: 0\nreplay:\n  per_step: 0\n", ["nothing to play"]),
    "retire below admit": ("replay:\n  retire_at: 0.1\n  admit_below: 0.5\n", ["retire_at"]),
}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_bad_config_file_names_file_and_line_or_key(tmp_path, name):
    text, fragments = CONFIG_CASES[name]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    CASES_TRIED["config files"] += 1


def test_non_utf8_and_missing_config_files(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"run:\n  seed: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 20\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    CASES_TRIED["config files"] += 2


OVERRIDE_CASES = {
    "run.max_stepz=2": "run.max_stepz: unknown key",
    "run.max_steps": "expected KEY=VALUE",
    "=3": "empty key",
    "run.max_steps=-1": "run.max_steps",
    "judge.max_invalid_share=2": "judge.max_invalid_share",
    "model.finetune=qlora": "model.finetune",
}


@pytest.mark.parametrize("override", list(OVERRIDE_CASES))
def test_bad_override_names_the_key(override):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert OVERRIDE_CASES[override] in str(err.value)
    CASES_TRIED["--set overrides"] += 1


def test_override_into_a_value_is_explained():
    with pytest.raises(ConfigError, match="run is a value, not a section"):
        load_config(None, ["run=5", "run.max_steps=2"])
    CASES_TRIED["--set overrides"] += 1


def test_cli_reports_config_errors_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  max_steps: 2\n seed: 1\n")
    res = cli("-c", str(path), "-o", str(tmp_path / "run"), "--quiet")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert "line 3" in res.output and str(path) in res.output
    assert not (tmp_path / "run").exists()  # nothing started
    CASES_TRIED["CLI"] += 1


@pytest.mark.parametrize(
    "override, shown", [("run.[/x]=1", "run.[/x]: unknown key"), ("run.[bold]x=1", "run.[bold]x: unknown key")]
)
def test_cli_error_messages_are_printed_verbatim(tmp_path, override, shown):
    """Error text comes from user input (keys, paths); rich must not read it as markup. Today a `[/x]`
    crashes the error printer (MarkupError traceback) and `[bold]` silently disappears from the key."""
    res = cli("-o", str(tmp_path / "run"), "--quiet", "--set", override)
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.exception!r}"
    assert shown in res.output
    CASES_TRIED["CLI"] += 1


# ============================================================================ seed files

SEED_CASES = {  # file name -> (bytes, column option, fragments besides the path)
    "empty.txt": (b"", None, ["no harmful seeds found"]),
    "comments.txt": (b"# only\n\n   \n# comments\n", None, ["no harmful seeds found"]),
    "latin1.txt": (b"ok\nsecond\ncaf\xe9\n", None, ["line 3", "not valid UTF-8"]),
    "wrong-columns.csv": (
        b"foo,bar\n1,2\n",
        None,
        ["no seed column found among ['foo', 'bar']", "game.harmful_column"],
    ),
    "named-column.csv": (b"goal\nx\n", "Behavior", ["column 'Behavior' not found", "columns are ['goal']"]),
    "empty.csv": (b"", None, ["empty CSV (no header row)"]),
    "header-only.csv": (b"goal\n", None, ["no harmful seeds found"]),
    "latin1.csv": (b"goal\nfine\ncaf\xe9\n", None, ["line 3", "not valid UTF-8"]),
    "bad-json.jsonl": (b'{"goal": "a"}\n{"goal": "b"}\n{"goal": \n', None, ["line 3", "invalid JSON"]),
    "not-object.jsonl": (b'{"goal": "a"}\n["b"]\n', None, ["line 2", "expected a JSON object"]),
    "not-text.jsonl": (b'{"goal": "a"}\n{"goal": 5}\n', None, ["line 2", "column 'goal' is not text"]),
    "no-column.jsonl": (b'{"text2": "a"}\n', None, ["no seed column found"]),
}


@pytest.mark.parametrize("name", list(SEED_CASES))
def test_bad_seed_file_names_file_and_line_or_column(tmp_path, name):
    data, column, fragments = SEED_CASES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SeedError) as err:
        load_seeds(str(path), "harmful", column)
    msg = str(err.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    CASES_TRIED["seed files"] += 1


def test_missing_seed_file_fails_before_training(tmp_path):
    run = tmp_path / "run"
    res = cli("-c", TINY, "-o", str(run), "--quiet", *sets(f"game.benign_seeds={tmp_path / 'gone.jsonl'}"))
    assert res.exit_code == 2 and "benign seed file not found" in res.output and "gone.jsonl" in res.output
    assert not (run / "metrics.jsonl").exists()
    CASES_TRIED["seed files"] += 1


SEED_EDGE_CASES = {  # inputs that crash today or load wrongly (see docs/reliability.md, "Open findings")
    "huge-field.csv": (b"goal\n" + b"a" * 200_000 + b"\n", "line 2"),  # csv.Error: field larger than field limit
    "deep.jsonl": (b'{"goal": "a"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 2"),  # RecursionError
}


@pytest.mark.parametrize("name", list(SEED_EDGE_CASES))
def test_pathological_seed_files_give_seed_errors(tmp_path, name):
    data, line = SEED_EDGE_CASES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SeedError) as err:
        load_seeds(str(path), "harmful")
    assert str(path) in str(err.value) and line in str(err.value)
    CASES_TRIED["seed files"] += 1


@pytest.mark.parametrize("name", ["bom.csv", "bom.txt", "bom.jsonl"])
def test_seed_files_with_a_utf8_byte_order_mark_load(tmp_path, name):
    """Spreadsheet exports start with a BOM; today the CSV column is not found ('\\ufeffgoal') and the
    first text seed silently starts with an invisible U+FEFF."""
    body = {"bom.csv": b"goal\nfirst goal\n", "bom.txt": b"first goal\n", "bom.jsonl": b'{"goal": "first goal"}\n'}[
        name
    ]
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body)
    assert [s.text for s in load_seeds(str(path), "harmful")] == ["first goal"]
    CASES_TRIED["seed files"] += 1


# ============================================================================ models and prompts


@pytest.fixture(scope="module")
def no_template_model(tmp_path_factory) -> Path:
    """A local model folder built from the tiny model, with its chat template removed."""
    from ssp.models.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("models") / "no-chat-template"
    model, tok = build_tiny_model(TinyModelConfig())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_model_without_chat_template_is_refused_clearly(no_template_model, tmp_path):
    from ssp.models.loader import load_policy

    with pytest.raises(ValueError, match="the tokenizer has no chat template") as err:
        load_policy(ModelConfig(name_or_path=str(no_template_model)))
    assert "model.name_or_path=" in str(err.value) and str(no_template_model) in str(err.value)
    run = tmp_path / "run"
    res = cli("-c", TINY, "-o", str(run), "--quiet", *sets(f"model.name_or_path={no_template_model}"))
    assert res.exit_code == 2 and "no chat template" in res.output
    assert not (run / "metrics.jsonl").exists()
    CASES_TRIED["models"] += 1


def test_long_prompts_follow_the_truncation_policy(tiny_cfg):
    """ChatEncoder: framing and prefill intact, the END of the last message's content is cut."""
    from ssp.config import SamplingConfig
    from ssp.models.loader import load_policy
    from ssp.rollout.chat import ChatEncoder
    from ssp.rollout.hf import HFRolloutEngine

    model, tok = load_policy(tiny_cfg.model)
    content = " ".join(f"word{i}" for i in range(3000))
    request = ChatRequest(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}], prefill=ATTACK_OPEN
    )
    enc = ChatEncoder(tok, max_prompt_tokens=96)
    ids, truncated = enc.encode(request)
    text = tok.decode(ids)
    assert truncated and len(ids) <= 96
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n" + ATTACK_OPEN)
    kept = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert kept and content.startswith(kept)  # a prefix: the end was cut
    with pytest.raises(ValueError, match="max_prompt_tokens=16 is shorter than the chat framing"):
        ChatEncoder(tok, max_prompt_tokens=16).encode(request)
    [[c]] = HFRolloutEngine(model, tok, 96, 4).generate([request], SamplingConfig(max_new_tokens=4))
    assert c.prompt_truncated and len(c.prompt_ids) <= 96
    CASES_TRIED["long prompts"] += 2


@pytest.mark.timeout(120)
def test_training_on_seeds_longer_than_the_context(tmp_path):
    seeds = tmp_path / "long.txt"
    seeds.write_text("".join(f"Goal {i}: " + "explain this in great detail " * 400 + "\n" for i in range(4)))
    run = tmp_path / "run"
    cfg = load_config(
        TINY,
        FAST
        + [
            "run.max_steps=1",
            f"game.harmful_seeds={seeds}",
            f"game.benign_seeds={seeds}",
            "model.max_prompt_tokens=256",
            "replay.reflect=false",
        ],
    )
    summary = Trainer(cfg, run, progress=False).train()
    assert summary["last_step"] == 1
    CASES_TRIED["long prompts"] += 1


@pytest.mark.timeout(120)
def test_framing_that_cannot_fit_is_refused_before_training(tmp_path):
    """model.max_prompt_tokens=300 fits the attacker's framing (193 tiny-model tokens) but not the
    reflective replay context (~630): today step 1 runs and checkpoints, and the run dies at step 2
    when replay starts. A limit no request can meet should be refused at setup."""
    run = tmp_path / "run"
    cfg = load_config(TINY, FAST + ["run.max_steps=3", "run.checkpoint_every=1", "model.max_prompt_tokens=300"])
    with pytest.raises((ValueError, TrainingError), match="max_prompt_tokens"):
        Trainer(cfg, run, progress=False).train()
    assert not (run / "metrics.jsonl").exists(), "failed after training had started"
    CASES_TRIED["long prompts"] += 1


def test_prompt_limit_beyond_the_model_context_is_refused(tmp_path):
    """The tiny model has 2,048 positions; 4,000 prompt tokens + new tokens cannot fit. Today this is
    accepted and generation silently runs past the trained positions."""
    cfg = load_config(TINY, ["run.max_steps=0", "model.max_prompt_tokens=4000"])
    with pytest.raises((ValueError, TrainingError), match="max_prompt_tokens"):
        Trainer(cfg, tmp_path / "run", progress=False).train()
    CASES_TRIED["long prompts"] += 1


# ============================================================================ output folder and disk


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    targets = [blocker / "run"]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        targets.append(locked / "run")
    elif Path("/sys").is_dir():  # root ignores permission bits; sysfs refuses new folders even to root
        targets.append(Path("/sys/ssp-reliability-test/run"))
    for target in targets:
        with pytest.raises(TrainingError, match="is not writable"):
            Trainer(load_config(TINY), target, progress=False).train()
        res = cli("-c", TINY, "-o", str(target), "--quiet")
        assert res.exit_code == 2 and f"output folder {target} is not writable" in res.output, res.output
        CASES_TRIED["output folders"] += 1


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 30))
    run = tmp_path / "run"
    res = cli("-c", TINY, "-o", str(run), "--quiet")
    assert res.exit_code == 2, res.output
    assert f"output folder {run}: only 1.00 GiB free, need at least 2 GiB" in res.output
    assert sorted(p.name for p in run.iterdir()) == []  # checked before anything was written
    CASES_TRIED["output folders"] += 1


@pytest.mark.timeout(180)
def test_disk_full_while_checkpointing_never_leaves_a_loadable_partial_checkpoint(tmp_path, monkeypatch):
    real = ckpt.optimizer_to_files
    calls = []

    def failing(optimizer, folder):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "optimizer.safetensors"))
        return real(optimizer, folder)

    monkeypatch.setattr(ckpt, "optimizer_to_files", failing)
    run = tmp_path / "run"
    cfg = load_config(TINY, FAST + ["run.max_steps=3", "run.checkpoint_every=1"])
    with pytest.raises(OSError, match="No space left"):
        Trainer(cfg, run, progress=False).train()
    assert ckpt.latest_checkpoint(run).name == "step-000001"
    assert (run / "checkpoints" / ".tmp-step-000002").is_dir()  # the partial one, never a candidate
    monkeypatch.setattr(ckpt, "optimizer_to_files", real)
    Trainer(cfg, run, resume=True, progress=False).train()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and ckpt.latest_checkpoint(run).name == "step-000003"
    assert not (run / "checkpoints" / ".tmp-step-000002").exists()
    CASES_TRIED["output folders"] += 1


# ============================================================================ property-based tests

_SECTIONS = {name: list(field.annotation.model_fields) for name, field in SSPConfig.model_fields.items()}
_RAW_SCALARS = [
    "2001-13-14",
    "2001-02-30 25:61:61",
    "!!int x",
    "!!float abc",
    "!!timestamp x",
    "!!binary ?",
    "!!set {a}",
    "!!omap [a]",
    "!!python/name:os.system",
    "!!python/object/apply:os.system [ls]",
    "&a [*a]",
    "*nothing",
    "[" * 400,
    "{" * 400,
    "~",
    ".nan",
    "-.inf",
    "1e400",
    "0x1F",
    "0o17",
    "1_000",
    "yes",
    "No",
    "''",
    '"\\x00"',
    "'unterminated",
    "{a: 1, a: 2}",
    "? [a, b]\n  : c",
    "|\n  block",
    "@reserved",
    "`reserved",
    "%TAG",
    "---",
    "...",
    "\ufeff",
    "'\\ud800'",
]
_scalar = st.one_of(
    st.sampled_from(_RAW_SCALARS),
    st.integers().map(str),
    st.floats().map(str),
    st.text(max_size=30).map(json.dumps),
    st.text(max_size=30),
)
_key_path = st.sampled_from(sorted(_SECTIONS)).flatmap(
    lambda s: st.sampled_from(_SECTIONS[s] + ["no_such_key"]).map(lambda k: f"{s}.{k}")
)


def _yaml_doc(lines: list[tuple[str, str]]) -> str:
    out = []
    for path, raw in lines:
        section, key = path.split(".", 1)
        out.append(f"{section}:\n  {key}: {raw}\n")
    return "".join(out)


_yaml_text = st.one_of(
    st.text(),
    st.lists(st.tuples(_key_path, _scalar), max_size=5).map(_yaml_doc),
    st.lists(
        st.sampled_from(
            [
                "a:",
                " b: c",
                "- d",
                "[",
                "]",
                "{",
                ":",
                "\t",
                "#",
                "!!str",
                "&x",
                "*x",
                "\n",
                "'",
                '"',
                "run:",
                "  max_steps: 1",
            ]
        ),
        max_size=12,
    ).map("".join),
)
PROPERTY = settings(
    max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@PROPERTY
@given(text=_yaml_text)
@example(text="run:\n  seed: 2001-13-14\n")  # PyYAML raises ValueError for impossible dates
@example(text="run:\n  seed: !!int x\n")
@example(text="run:\n  seed: " + "[" * 2000 + "\n")  # RecursionError in PyYAML's composer
def test_config_loader_never_crashes_on_arbitrary_yaml(fuzz_dir, text):
    path = fuzz_dir / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    CASES_TRIED["hypothesis: config files"] += 1
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(path) in str(e) or "invalid configuration" in str(e)
    else:
        assert isinstance(cfg, SSPConfig)


_override = st.one_of(
    st.text(max_size=40),
    st.tuples(_key_path, _scalar).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.text(max_size=10), st.text(max_size=10)).map("=".join),
)


@PROPERTY
@given(overrides=st.lists(_override, max_size=4))
@example(overrides=["run.seed=2001-13-14"])
@example(overrides=["run.seed=" + "[" * 2000])
def test_config_overrides_never_crash(overrides):
    CASES_TRIED["hypothesis: --set lists"] += 1
    try:
        cfg = load_config(TINY, overrides)
    except ConfigError as e:
        assert str(e)
    else:
        assert isinstance(cfg, SSPConfig)


_SEED_CHUNKS = [
    b"goal",
    b"Behavior",
    b",",
    b"\n",
    b"\r\n",
    b'"',
    b"{",
    b"}",
    b":",
    b'"goal"',
    b"[",
    b"]",
    b"#",
    b"\t",
    b" ",
    b"x",
    b"\xff",
    b"\xe9",
    b"\x00",
    b"\xef\xbb\xbf",
    b"null",
    b"5",
    b"\\",
]
_seed_bytes = st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(_SEED_CHUNKS), max_size=30).map(b"".join))


@PROPERTY
@given(
    data=_seed_bytes,
    suffix=st.sampled_from([".txt", ".csv", ".jsonl"]),
    column=st.sampled_from([None, "goal", "Behavior"]),
)
def test_seed_loader_never_crashes_on_arbitrary_bytes(fuzz_dir, data, suffix, column):
    path = fuzz_dir / f"seeds{suffix}"
    path.write_bytes(data)
    CASES_TRIED["hypothesis: seed files"] += 1
    try:
        seeds = load_seeds(str(path), "harmful", column)
    except SeedError as e:
        assert str(path) in str(e)
    else:
        assert seeds and all(s.text and s.text == s.text.strip() for s in seeds)


_MARKERY = st.lists(
    st.sampled_from(
        [ATTACK_OPEN, ATTACK_CLOSE, "<", ">", "/", "prompt", " ", "\n", "\t", "x", "\u2028", "\u00a0", "\x00", "é"]
    ),
    max_size=20,
).map("".join)


@PROPERTY
@given(text=st.one_of(st.text(), _MARKERY), finished=st.booleans(), accept_truncated=st.booleans())
def test_parse_attack_never_crashes_and_never_leaks_markers(text, finished, accept_truncated):
    CASES_TRIED["hypothesis: attacker outputs"] += 1
    out = parse_attack(text, finished, accept_truncated)
    if out is not None:
        assert out and out == out.strip()
        assert ATTACK_OPEN not in out and ATTACK_CLOSE not in out


@PROPERTY
@given(prompt=st.text(min_size=1), rest=st.one_of(st.text(), _MARKERY))
def test_parse_attack_returns_the_text_before_the_closing_marker(prompt, rest):
    prompt = prompt.strip()
    if not prompt or ATTACK_OPEN in prompt or ATTACK_CLOSE in prompt:
        return
    CASES_TRIED["hypothesis: attacker outputs"] += 1
    assert parse_attack(prompt + ATTACK_CLOSE + rest, finished=False) == prompt
    assert parse_attack(" \n" + prompt + " \n" + ATTACK_CLOSE, finished=False) == prompt
