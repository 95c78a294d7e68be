"""Security (issue 7 §5): nothing unpickled, no remote code by default, API keys never written,
loopback-only servers, and HTML reports that never execute model text (checked in headless Chromium).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import pickle  # only to build a malicious file in a test; src/ must never import it
import re
import secrets
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO
from tests.fixtures.reliability.fault_server import BeaconServer, FaultServer, judge_options

from ssp.config import ModelConfig, TinyModelConfig, load_config
from ssp.judges import build_judge
from ssp.training.trainer import Trainer

SRC = REPO / "src" / "ssp"
TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["rollout.attacker.max_new_tokens=8", "rollout.defender.max_new_tokens=8", "run.checkpoint_every=1"]
SAFE_SUFFIXES = {".safetensors", ".json", ".yaml", ".sqlite", ".md"}


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """One torch thread for every test here (see conftest)."""


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


# ================================================================== no unpickling anywhere in src/

_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
_UNSAFE_YAML = {
    "load",
    "load_all",
    "unsafe_load",
    "unsafe_load_all",
    "full_load",
    "full_load_all",
    "Loader",
    "UnsafeLoader",
    "FullLoader",
    "CLoader",
    "CUnsafeLoader",
    "CFullLoader",
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # x().eval() is not eval()
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else k.value
    return None


def unsafe_constructs(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in _UNSAFE_MODULES:
                found.append(f"from {node.module} import ...")
            if mod == "torch" and any(a.name in ("load", "save") for a in node.names):
                found.append("from torch import load/save")
            if mod == "yaml" and any(a.name in _UNSAFE_YAML for a in node.names):
                found.append("from yaml import an unsafe loader")
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name.startswith("yaml.") and node.attr in _UNSAFE_YAML:
                found.append(name)
            if node.attr == "read_pickle":
                found.append(name)
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and _kw(node, "weights_only") is not True:
                found.append("torch.load without weights_only=True")
            if name == "torch.save":
                found.append("torch.save (pickle)")
            if name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") is True:
                found.append(f"{name}(allow_pickle=True)")
            if name in ("eval", "exec", "os.system", "os.popen"):
                found.append(f"{name}()")
            if name.startswith("subprocess.") and _kw(node, "shell") is True:
                found.append(f"{name}(shell=True)")
            for kw, bad in (("trust_remote_code", True), ("weights_only", False), ("use_safetensors", False)):
                if _kw(node, kw) is bad:
                    found.append(f"{name}({kw}={bad})")
    return found


def test_unsafe_construct_scanner_catches_what_it_should():
    bad = (
        "import pickle\nfrom dill import loads\nimport torch, yaml, numpy as np, subprocess\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\ntorch.save(x, f)\nyaml.load(s, Loader=yaml.Loader)\n"
        "np.load(f, allow_pickle=True)\neval(s)\nsubprocess.run(c, shell=True)\n"
        "m.from_pretrained(p, trust_remote_code=True)\n"
    )
    assert len(unsafe_constructs(ast.parse(bad))) >= 11
    good = "import torch, yaml\ntorch.load(f, weights_only=True)\nyaml.safe_load(s)\nmodel.eval()\n"
    assert unsafe_constructs(ast.parse(good)) == []


def test_no_unpickling_remote_code_or_eval_in_src():
    problems, calls = [], 0
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        calls += sum(isinstance(n, ast.Call) for n in ast.walk(tree))
        problems += [f"{path.relative_to(REPO)}: {p}" for p in unsafe_constructs(tree)]
    assert not problems, "\n".join(problems)
    assert calls > 500  # the scan did look at the code
    print(f"\nsecurity scan: {len(source_files())} files, {calls} calls inspected, 0 unsafe constructs")


# ================================================================== trust_remote_code


def test_trust_remote_code_defaults_off_and_is_passed_through(monkeypatch):
    import transformers

    from ssp.judges.guards import GuardOptions, load_guard_model
    from ssp.models.loader import load_base_model
    from ssp.models.tiny import build_tiny_model

    seen = []
    tiny_model, tiny_tok = build_tiny_model(TinyModelConfig())

    def fake_tok(source, **kw):
        seen.append(("tokenizer", source, kw.get("trust_remote_code", "<absent>")))
        return tiny_tok

    def fake_model(source, **kw):
        seen.append(("model", source, kw.get("trust_remote_code", "<absent>")))
        return tiny_model

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    assert ModelConfig().trust_remote_code is False
    assert load_config(None).model.trust_remote_code is False
    load_base_model(ModelConfig(name_or_path="someone/model"))
    load_base_model(ModelConfig(name_or_path="someone/model", trust_remote_code=True))
    assert seen == [
        ("tokenizer", "someone/model", False),
        ("model", "someone/model", False),
        ("tokenizer", "someone/model", True),
        ("model", "someone/model", True),
    ]
    seen.clear()
    assert GuardOptions.model_fields["trust_remote_code"].default is False
    load_guard_model(f"guard/{secrets.token_hex(4)}", device="cpu")
    assert [s[2] for s in seen] == [False, False]


@pytest.fixture
def malicious_pickle(tmp_path):
    """Bytes that, if unpickled, create a marker folder."""
    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    return pickle.dumps({"model.embed_tokens.weight": Exploit()}), marker


def test_pickled_weights_are_never_unpickled(tmp_path, malicious_pickle):
    """A model folder or adapter whose weights are a pickle with a payload: loading fails, nothing runs."""
    from ssp.models.loader import load_policy
    from ssp.models.tiny import build_tiny_model

    payload, marker = malicious_pickle
    folder = tmp_path / "model"
    model, tok = build_tiny_model(TinyModelConfig())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # torch's weights-only unpickler
        load_policy(ModelConfig(name_or_path=str(folder)))
    assert not marker.exists(), "a pickled model file was unpickled"

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
        )
    )
    (adapter / "adapter_model.bin").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_policy(ModelConfig(name_or_path="tiny"), adapter=adapter)
    assert not marker.exists(), "a pickled adapter file was unpickled"


# ================================================================== checkpoints: safe formats only


def _sniff(path: Path) -> str:
    """The file parses as what its name says (safetensors: an 8-byte header length, then JSON)."""
    head = path.read_bytes()[:8]
    assert not head.startswith(b"PK\x03\x04"), f"{path}: zip archive (torch.save format)"
    if path.suffix != ".safetensors":
        assert not head.startswith(b"\x80"), f"{path}: pickle stream"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".yaml":
        yaml.safe_load(path.read_text(encoding="utf-8"))
    elif path.suffix == ".sqlite":
        assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    return path.suffix


@pytest.mark.timeout(180)
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_checkpoints_hold_no_pickle(tmp_path, finetune):
    run = tmp_path / "run"
    Trainer(load_config(TINY, FAST + ["run.max_steps=1", f"model.finetune={finetune}"]), run, progress=False).train()
    files = [p for p in (run / "checkpoints").rglob("*") if p.is_file()]
    assert files
    bad = [str(p.relative_to(run)) for p in files if p.suffix not in SAFE_SUFFIXES]
    assert not bad, f"unexpected file types in a checkpoint: {bad}"
    kinds = {_sniff(p) for p in files}
    assert ".safetensors" in kinds and ".sqlite" in kinds
    for p in run.iterdir():
        if p.is_file():
            assert p.suffix in SAFE_SUFFIXES | {".jsonl"}, p


# ================================================================== API keys


def test_api_key_cannot_be_put_in_a_config():
    key = "sk-ssp-" + secrets.token_hex(8)
    with pytest.raises(ValueError, match="api_key") as err:
        build_judge("openai_rubric", {"model": "m", "api_key": key})
    assert key not in str(err.value)


def _leaks(blob: bytes, key: str) -> list[str]:
    forms = {
        "raw": key.encode(),
        "utf-16": key.encode("utf-16-le"),
        "base64": base64.b64encode(key.encode())[:16],
        "bearer": f"Bearer {key}".encode(),
    }
    return [name for name, needle in forms.items() if needle in blob]


@pytest.mark.timeout(240)
def test_api_key_is_used_but_never_written(tmp_path):
    """A real `ssp train` process with the endpoint judge: the key travels in the Authorization header
    and appears in no file of the run folder (checkpoints, pool, verdict cache, logs, config), in no
    output of the process, and in no report."""
    key = "sk-ssp-reliability-" + secrets.token_hex(16)
    var = "SSP_RELIABILITY_TEST_KEY"
    run = tmp_path / "run"
    with FaultServer("ok") as server:
        opts = judge_options(server.base_url, api_key_env=var, cache=str(run / "judge-cache.sqlite"))
        cmd = [sys.executable, "-m", "ssp", "train", "-c", TINY, "-o", str(run), "--quiet"]
        for s in FAST + [
            "run.max_steps=2",
            "run.threads=1",
            "run.log_exchanges=1000",
            "judge.name=openai_rubric",
            f"judge.options={json.dumps(opts)}",
        ]:
            cmd += ["--set", s]
        env = {**os.environ, var: key, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=200)
        auth = [r["authorization"] for r in server.requests]
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert auth and all(a == f"Bearer {key}" for a in auth), "the key was not used"
    assert f"api_key_env: {var}" in (run / "config.yaml").read_text()

    leaks = {}
    files = [p for p in run.rglob("*") if p.is_file()]
    assert (run / "judge-cache.sqlite").is_file() and any(p.name == "adapter_model.safetensors" for p in files)
    for p in files:
        if found := _leaks(p.read_bytes(), key):
            leaks[str(p.relative_to(run))] = found
    for name, blob in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        if found := _leaks(blob, key):
            leaks[name] = found
    from ssp.eval.report import build_training_report

    if found := _leaks(build_training_report(run).encode(), key):
        leaks["training report"] = found
    assert not leaks, f"API key written to: {leaks}"
    print(f"\napi key: {len(auth)} authorised requests, {len(files)} run files + 2 logs + 1 report scanned, 0 leaks")


# ================================================================== servers bind to loopback

_SERVER_HINTS = re.compile(
    r"HTTPServer|socketserver|serve_forever|make_server|uvicorn|\.bind\(|\.listen\(|"
    r"run_app\(|--host|vllm\.entrypoints"
)


def test_servers_bind_loopback_by_default():
    """Any module that starts a server must default to 127.0.0.1; no code binds to all interfaces."""
    wildcard = []
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and id(n) not in docstrings and n.value in ("0.0.0.0", "::", "[::]"):
                wildcard.append(f"{path.relative_to(REPO)}:{n.lineno}")
        text = path.read_text(encoding="utf-8")
        if _SERVER_HINTS.search(text):
            assert "127.0.0.1" in text or "localhost" in text, f"{path}: starts a server without a loopback default"
    assert not wildcard, f"wildcard bind addresses in code: {wildcard}"
    from ssp.judges.rubric import EndpointOptions

    assert EndpointOptions.model_fields["base_url"].default.startswith("http://127.0.0.1:")


# ================================================================== HTML reports never execute model text


class _DomAudit(HTMLParser):
    """Elements and attributes that would run script, load resources or navigate."""

    DANGEROUS_TAGS = {
        "script",
        "iframe",
        "object",
        "embed",
        "svg",
        "math",
        "frame",
        "frameset",
        "base",
        "form",
        "link",
        "meta",
        "audio",
        "video",
        "source",
        "xss",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag in self.DANGEROUS_TAGS or tag.startswith("xss"):
            if not (
                tag == "meta"
                and set(dict(attrs)) <= {"charset", "name", "content"}
                and dict(attrs).get("name") in (None, "viewport")
            ):
                self.problems.append(f"<{tag} {attrs}>")
        for name, value in attrs:
            v = (value or "").strip().lower()
            if name.startswith("on") or name in ("srcdoc", "formaction") or v.startswith(("javascript:", "vbscript:")):
                self.problems.append(f"<{tag} {name}={value!r}>")
            if (
                name in ("src", "href", "srcset", "poster", "background")
                and v
                and not v.startswith(("data:image/png", "#"))
            ):
                self.problems.append(f"<{tag} {name}={value!r}> (external resource)")

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False


def _payloads(beacon: str) -> dict[str, str]:
    def mark(name: str) -> str:
        return (
            f"document.documentElement.appendChild(document.createElement('xss-{name}'));"
            f"new Image().src='{beacon}/{name}'"
        )

    return {
        "script": f"<script>document.title='XSS';{mark('script')}</script>",
        "img": f'<img src=x onerror="{mark("img")}">',
        "svg": f'<svg onload="{mark("svg")}"></svg>',
        "attr": f'"\'><img src=x onerror="{mark("attr")}">',
        "close": f"</pre></td></tr></table></details><script>{mark('close')}</script>",
        "iframe": f'<iframe srcdoc="<script>parent.{mark("iframe")}</script>"></iframe>',
        "link": '<a href="javascript:alert(1)">click</a>',
        "style": f"<style>body{{background:url({beacon}/style)}}</style>",
        "remote-img": f'<img src="{beacon}/remote-img">',
        "meta": f'<meta http-equiv="refresh" content="0;url={beacon}/meta">',
        "comment": f"--><!--<script>{mark('comment')}</script>",
        "entity": "&lt;script&gt;alert(1)&lt;/script&gt; &#x3C;script&#x3E;",
    }


def _write_training_run(run: Path, p: dict[str, str]) -> None:
    from ssp.config import ReplayConfig
    from ssp.replay.pool import Candidate, ExperiencePool

    run.mkdir(parents=True)
    every = " ".join(p.values())
    (run / "metrics.jsonl").write_text(
        json.dumps(
            {"step": 1, "reward/attacker": 0.5, "reward/defender": 0.5, "loss": 0.1, "pool/size": 1, "time/step": 1.0}
        )
        + "\n"
    )
    exchanges = [
        {
            "step": 1,
            "kind": kind,
            "goal": p["script"] + p["close"],
            "category": p["attr"],
            "prompt": every,
            "response": every,
            "outcome": p["img"],
            "hint": p["svg"],
            "r_def": 0.0,
            "r_att": 1.0,
            "entry_id": None,
            "verdict": {
                "score": 5.0,
                "refused": False,
                "harmful": True,
                "on_topic": True,
                "rationale": every,
                "valid": True,
                "raw": every,
            },
        }
        for kind in ("attack", p["iframe"])
    ]
    (run / "exchanges.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exchanges))
    (run / "summary.json").write_text(json.dumps({"run_dir": every, p["meta"]: p["link"], "pool_size": every}))
    (run / "config.yaml").write_text(yaml.safe_dump({"judge": {"name": "x", "options": {"note": every}}}))
    with ExperiencePool(run / "pool.sqlite", ReplayConfig()) as pool:
        pool.admit(
            [
                Candidate(
                    goal=p["script"] + every,
                    attack=every,
                    responses=[every, p["remote-img"]],
                    score=5.0,
                    rationale=every,
                    mean_reward=0.0,
                )
            ],
            step=1,
        )


def _write_eval_results(p: dict[str, str]):
    from ssp.eval.results import build_results

    every = " ".join(p.values())
    verdict = {
        "score": 5.0,
        "refused": False,
        "harmful": True,
        "on_topic": True,
        "rationale": every,
        "valid": True,
        "raw": every,
    }
    samples = [
        {
            "index": 0,
            "prompt": every,
            "response": every,
            "verdict": verdict,
            "meta": {"template": p["img"], "hint": p["svg"]},
            "cost": {"defender_generations": 1},
        },
        {"index": 1, "prompt": None, "response": None, "verdict": None, "meta": {"attacker_output": every}, "cost": {}},
    ]
    records = [
        {
            "suite": p["attr"],
            "benchmark": "b",
            "split": "x",
            "kind": "harmful",
            "attack": attack,
            "item_id": p["close"],
            "category": p["iframe"],
            "goal": every,
            "samples": samples,
            "time_s": 0.1,
        }
        for attack in ("template", "self")
    ]
    settings = {
        "model": {"name_or_path": p["script"]},
        "adapter": p["img"],
        "defense": {"name": p["svg"]},
        "judge": {"name": p["meta"]},
        "attacks": {"template": {"samples": 1, "note": every}},
        "benchmarks": [{"suite": p["attr"], "kind": "harmful", "n_used": 1, "n_total": 1, "source": every}],
        "limit": every,
        "seed": 0,
    }
    suites = [{"suite": p["attr"], "benchmark": "b", "split": "x", "kind": "harmful", "item_ids": [p["close"]]}]
    results = build_results(
        records, suites, {"template": {"samples": 1}, "self": {"samples": 1}}, settings, embed=False
    )
    return results, records


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _render(browser: str, html_file: Path, profile: Path) -> str:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        "--dump-dom",
        html_file.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, timeout=90)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    return out.stdout.decode("utf-8", errors="replace")


@pytest.mark.timeout(300)
def test_html_reports_never_run_model_text_in_a_browser(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not on PATH (CI: apt-get install -y --no-install-recommends chromium)")
    from ssp.eval.report import build_compare_html, build_eval_report, build_training_report

    with BeaconServer() as beacon:  # any request it receives means injected markup ran or loaded something
        p = _payloads(f"{beacon.url}/beacon")

        # Positive control: the same payloads, unescaped, do run in this browser and the checks see them.
        control = tmp_path / "control.html"
        control.write_text(
            "<!DOCTYPE html><html><head><title>control</title></head><body>" + "".join(p.values()) + "</body></html>"
        )
        dom = _render(browser, control, tmp_path / "profile-control")
        audit = _DomAudit()
        audit.feed(dom)
        control_hits = beacon.take()
        assert "<xss-script>" in dom and "<xss-img>" in dom, "the control payloads did not run: the test is blind"
        assert audit.title == "XSS" and len(audit.problems) >= 5
        assert any(h.endswith("/remote-img") for h in control_hits), control_hits

        run = tmp_path / ("run" + p["img"].replace("/", ""))  # the run folder's name is in the report title
        _write_training_run(run, p)
        results, records = _write_eval_results(p)
        reports = {
            "training": build_training_report(run),
            "eval": build_eval_report(results, records),
            "compare": build_compare_html(
                [p["attr"], p["script"]], [[p["img"], p["svg"]]], [p["close"]], [p["iframe"]], [results]
            ),
        }
        for name, html_text in reports.items():
            assert "&lt;script&gt;" in html_text, f"{name}: the payload is not in the report at all"
            assert "&lt;img src=x onerror=" in html_text, f"{name}: the onerror payload is not in the report"
            page = tmp_path / f"{name}.html"
            page.write_text(html_text, encoding="utf-8")
            dom = _render(browser, page, tmp_path / f"profile-{name}")
            audit = _DomAudit()
            audit.feed(dom)
            assert not audit.problems, f"{name} report: injected markup in the rendered DOM: {audit.problems[:5]}"
            assert not any(t.startswith("xss") for t in audit.tags)
            assert audit.title.startswith("SSP "), f"{name}: title changed to {audit.title!r}"
            assert beacon.take() == [], f"{name} report: the page loaded a payload URL"
    print(
        f"\nxss: {len(p)} payloads in {len(reports)} reports rendered by {Path(browser).name}: nothing ran, "
        f"nothing loaded (control page: {len(control_hits)} beacon hits, payload elements created)"
    )
