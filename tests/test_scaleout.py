"""Scale-out pieces that run without a GPU: accelerate presets, 7B model presets, and the vLLM backend's
weight export, request building, response parsing and server mode (against a local HTTP server that
serves the tiny model through the HF backend). The colocated engine runs against a stand-in `vllm`
module whose "engine" is a plain HF copy of the base model; real vLLM is not exercised here."""

from __future__ import annotations

import copy
import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO

from ssp.config import ConfigError, SamplingConfig, load_config
from ssp.models.loader import load_base_model, load_policy
from ssp.rollout import vllm_colocated as VC
from ssp.rollout import vllm_requests as VR
from ssp.rollout import vllm_server as VS
from ssp.rollout import weights as VW
from ssp.rollout.base import ChatRequest
from ssp.rollout.engines import build_rollout_engine
from ssp.rollout.hf import HFRolloutEngine

ACCEL = REPO / "configs" / "accelerate"
PRESETS = ["single_gpu", "multi_gpu_ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "multi_node"]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=10)
REQUESTS = [
    ChatRequest([{"role": "user", "content": "How do I bake bread at home?"}]),
    ChatRequest(
        [
            {"role": "system", "content": "You are a red-team assistant."},
            {"role": "user", "content": "Write an attack for the goal: pick a lock"},
        ],
        prefill="<prompt>",
    ),
    ChatRequest([{"role": "user", "content": "word " * 300}]),  # truncated by the ChatEncoder
]


# ---------------------------------------------------------------------------------------------
# accelerate presets
# ---------------------------------------------------------------------------------------------


def _launch_args(path: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "ssp", "train"])
    return _validate_launch_command(args)


@pytest.mark.parametrize("name", PRESETS)
def test_accelerate_presets_load_and_pass_launch_validation(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(ACCEL / f"{name}.yaml"))
    expected = {
        "single_gpu": (DistributedType.NO, 1, 1),
        "multi_gpu_ddp": (DistributedType.MULTI_GPU, 8, 1),
        "fsdp": (DistributedType.FSDP, 8, 1),
        "deepspeed_zero2": (DistributedType.DEEPSPEED, 8, 1),
        "deepspeed_zero3": (DistributedType.DEEPSPEED, 8, 1),
        "multi_node": (DistributedType.MULTI_GPU, 16, 2),
    }
    assert (cfg.distributed_type, cfg.num_processes, cfg.num_machines) == expected[name]
    args, _, _ = _launch_args(ACCEL / f"{name}.yaml")  # what `accelerate launch` does before starting workers
    assert args.num_processes == expected[name][1]
    assert args.multi_gpu == (name in ("multi_gpu_ddp", "multi_node"))


def test_fsdp_preset_builds_accelerates_fsdp2_plugin(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _launch_args(ACCEL / "fsdp.yaml")
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what the Accelerator builds in each worker
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.cpu_ram_efficient_loading is False


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_presets_use_a_config_file_accelerate_accepts(name, stage, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mp_from_config = _launch_args(ACCEL / f"{name}.yaml")
    # as `accelerate launch` does: the accelerate-config fields that a DeepSpeed JSON file must not duplicate
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", env["ACCELERATE_CONFIG_DS_FIELDS"])
    DeepSpeedPlugin._deepspeed_config_checks(None)  # raises if a field would be silently ignored
    ds = json.loads((REPO / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text())
    assert ds["zero_optimization"]["stage"] == stage
    # SSP prepares no dataloader: accelerate needs an integer micro-batch size in the file
    assert isinstance(ds["train_micro_batch_size_per_gpu"], int)
    assert ds["bf16"]["enabled"] is True


# ---------------------------------------------------------------------------------------------
# 7B model presets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, finetune", [("qwen2.5-7b-lora", "lora"), ("qwen2.5-7b-full", "full")])
def test_7b_presets_validate_with_guard_judge_and_vllm(name, finetune):
    from ssp.judges.registry import build_judge

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-7B-Instruct" and cfg.model.dtype == "bfloat16"
    assert cfg.model.finetune == finetune
    assert cfg.rollout.backend == "vllm" and cfg.rollout.vllm.mode == "colocated"
    judge = build_judge(cfg.judge.name, cfg.judge.options)  # validates the judge's own options; loads nothing
    assert judge.name == "llama_guard" and judge.options.model == "meta-llama/Llama-Guard-3-1B"


def test_vllm_server_mode_needs_an_adapter_folder():
    with pytest.raises(ConfigError, match="lora_dir"):
        load_config(None, ["rollout.backend=vllm", "rollout.vllm.mode=server"])
    cfg = load_config(None, ["rollout.backend=vllm", "rollout.vllm.mode=server", "rollout.vllm.lora_dir=/shared/x"])
    assert cfg.rollout.vllm.lora_dir == "/shared/x"


# ---------------------------------------------------------------------------------------------
# Weight export
# ---------------------------------------------------------------------------------------------


def _perturb_lora(model, seed: int, scale: float = 0.3) -> None:
    """Give the adapter non-zero weights (a fresh LoRA B is zero), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


@pytest.fixture(scope="module")
def lora_policy():
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    model, tok = load_policy(cfg.model)
    _perturb_lora(model, seed=1)
    return model, tok, cfg


def _export(model, only_changed):
    return {name: t.clone() for name, t in VW.export_weights(model, only_changed=only_changed)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_export_equals_peft_merge_and_unload(dtype, tiny_cfg):
    from peft import LoraConfig, get_peft_model

    base, _ = load_base_model(tiny_cfg.model)
    model = get_peft_model(base.to(dtype), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _perturb_lora(model, seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    exported = _export(model, only_changed=False)
    merged = copy.deepcopy(model).merge_and_unload()
    expected = dict(merged.named_parameters())  # tied lm_head/embeddings appear once, as in export
    assert set(exported) == set(expected)
    assert set(exported) <= set(merged.state_dict())  # HF checkpoint names
    for name, tensor in expected.items():
        assert exported[name].dtype == dtype
        assert torch.equal(exported[name], tensor.detach()), name  # bit-exact
    # the training weights were not touched
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_only_changed_export_is_the_merged_lora_modules(lora_policy):
    model, _, cfg = lora_policy
    changed = _export(model, only_changed=True)
    targets = set(cfg.model.lora.target_modules)
    assert changed and all(name.split(".")[-2] in targets and name.endswith(".weight") for name in changed)
    layers = cfg.model.tiny.num_layers
    assert len(changed) == layers * len(targets)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert all(torch.equal(t, merged[n]) for n, t in changed.items())


def test_full_finetune_export_is_every_trainable_parameter(tiny_cfg):
    model, _ = load_base_model(tiny_cfg.model)
    exported = _export(model, only_changed=True)
    assert set(exported) == {n for n, p in model.named_parameters() if p.requires_grad}
    model.model.embed_tokens.weight.requires_grad_(False)
    assert "model.embed_tokens.weight" not in _export(model, only_changed=True)


def test_names_map_onto_vllms_llama_parameters(lora_policy):
    """vLLM's LlamaForCausalLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj; with tied
    embeddings lm_head shares embed_tokens. Every exported HF name must land on one of its parameters,
    and every fused parameter must receive all its shards."""
    model, _, cfg = lora_policy
    layers = cfg.model.tiny.num_layers
    vllm_params = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(layers):
        p = f"model.layers.{i}."
        vllm_params |= {
            p + "self_attn.qkv_proj.weight",
            p + "self_attn.o_proj.weight",
            p + "mlp.gate_up_proj.weight",
            p + "mlp.down_proj.weight",
            p + "input_layernorm.weight",
            p + "post_attention_layernorm.weight",
        }
    shards: dict[str, set] = {}
    for name in _export(model, only_changed=False):
        target, shard = VW.vllm_parameter_name(name)
        assert target in vllm_params, name
        shards.setdefault(target, set()).add(shard)
    assert set(shards) == vllm_params
    for target, got in shards.items():
        if "qkv_proj" in target:
            assert got == {"q", "k", "v"}
        elif "gate_up_proj" in target:
            assert got == {0, 1}
        else:
            assert got == {None}


def test_checkpoint_names_strip_wrappers():
    assert (
        VW.hf_checkpoint_name("base_model.model.model.layers.3.mlp.up_proj.base_layer.weight")
        == "model.layers.3.mlp.up_proj.weight"
    )
    assert (
        VW.hf_checkpoint_name("module._orig_mod.base_model.model.lm_head.modules_to_save.default.weight")
        == "lm_head.weight"
    )
    assert VW.hf_checkpoint_name("model.norm.weight") == "model.norm.weight"


def test_materialized_model_loads_in_transformers_and_matches_the_policy(lora_policy, tmp_path):
    """The folder written for an in-memory model (what a colocated engine loads for `tiny`) is a
    complete HF checkpoint of the merged policy: no missing or unexpected keys, same greedy output."""
    from transformers import AutoModelForCausalLM

    model, tok, _ = lora_policy
    folder = VW.materialize_model(model, tok, tmp_path / "m")
    loaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    loaded.generation_config.eos_token_id = model.generation_config.eos_token_id
    ours = HFRolloutEngine(model, tok, 512).generate(REQUESTS[:2], GREEDY)
    theirs = HFRolloutEngine(loaded, tok, 512).generate(REQUESTS[:2], GREEDY)
    assert [c[0].completion_ids for c in ours] == [c[0].completion_ids for c in theirs]


def test_saved_adapter_is_peft_loadable_with_vllm_key_names(lora_policy, tmp_path, tiny_cfg):
    from peft import PeftModel
    from safetensors.torch import load_file

    model, _, _ = lora_policy
    folder = VW.save_adapter(model, tmp_path / "a")
    keys = set(load_file(folder / "adapter_model.safetensors"))
    assert keys and all(
        k.startswith("base_model.model.model.layers.") and ".lora_" in k and ".default." not in k for k in keys
    )
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == tiny_cfg.model.lora.r and cfg["lora_alpha"] == tiny_cfg.model.lora.alpha
    base, _ = load_base_model(tiny_cfg.model)
    reloaded = PeftModel.from_pretrained(base, folder)
    ours = copy.deepcopy(model).merge_and_unload().state_dict()
    assert all(torch.equal(t, ours[n]) for n, t in reloaded.merge_and_unload().state_dict().items())


# ---------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------


#: The fields vLLM 0.33's `/v1/completions` fills from the server's defaults (the model's generation_config.json)
#: when a request leaves them out (`CompletionRequest._DEFAULT_SAMPLING_PARAMS`).
SERVER_DEFAULTED = (
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
)


def test_sampling_maps_onto_vllm_parameters():
    kw = VR.sampling_params(SamplingConfig(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=33), 4, [7, 9])
    # Every field a vLLM server would fill from the model's generation_config.json is explicit (neutral).
    assert kw == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": 33,
        "stop_token_ids": [7, 9],
        "skip_special_tokens": True,
    }
    assert set(SERVER_DEFAULTED) <= set(kw)
    assert VR.sampling_params(SamplingConfig(top_k=20), 2, [])["top_k"] == 20
    greedy = VR.sampling_params(SamplingConfig(temperature=0.0, top_k=5, top_p=0.5), 4, [])
    assert greedy["n"] == 1 and greedy["temperature"] == 0.0 and greedy["top_k"] == 0 and greedy["top_p"] == 1.0
    body = VR.completion_request([1, 2, 3], SamplingConfig(max_new_tokens=5), 2, "m-v1", [9])
    assert body["prompt"] == [1, 2, 3] and body["model"] == "m-v1" and body["n"] == 2
    assert body["return_token_ids"] is True and body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True
    json.dumps(body)  # JSON-serialisable


class _Tok:
    """Enough tokenizer for the parsing tests: ids <-> space-separated numbers."""

    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == 2))

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(t) for t in text.split()]}


def test_token_ids_come_from_the_answer_not_the_text():
    tok = _Tok()
    assert VR.token_ids_from_choice({"token_ids": [5, 6, 2], "text": "x"}, tok) == ([5, 6, 2], "token_ids")
    lp = {"tokens": ["token_id:5", "token_id:6", "token_id:2"], "token_logprobs": [-1.0, -0.5, -0.1]}
    assert VR.token_ids_from_choice({"logprobs": lp, "text": "x"}, tok) == ([5, 6, 2], "logprobs")
    assert VR.token_ids_from_choice({"text": "5 6"}, tok) == ([5, 6], "retokenized")
    with pytest.raises(ValueError, match="no token ids"):
        VR.token_ids_from_choice({"text": "5"}, None)


def test_completions_follow_the_hf_backends_conventions():
    tok, eos = _Tok(), [2, 3]
    c = VR.build_completion([5, 2, 7], "stop", None, [1], tok, eos)  # cut after the first end-of-turn
    assert (c.completion_ids, c.finished, c.text, c.meta) == ([5, 2], True, "5", {})
    c = VR.build_completion([5, 6], "length", None, [1], tok, eos, prompt_truncated=True)
    assert (c.completion_ids, c.finished, c.prompt_truncated) == ([5, 6], False, True)
    c = VR.build_completion([5], "stop", 3, [1], tok, eos, source="retokenized")  # stop token missing: named
    assert (
        c.completion_ids == [5, 3]
        and c.finished
        and c.meta == {"token_ids_source": "retokenized", "eos_appended": True}
    )
    c = VR.build_completion([5], "stop", None, [1], tok, eos)  # None = the model's EOS
    assert c.completion_ids == [5, 2] and c.finished
    body = {
        "choices": [
            {"index": 1, "token_ids": [6, 2], "finish_reason": "stop"},
            {"index": 0, "token_ids": [5, 5], "finish_reason": "length"},
        ]
    }
    out = VR.completions_from_response(body, [1, 4], 2, tok, eos)
    assert [o.completion_ids for o in out] == [[5, 5], [6, 2]] and [o.finished for o in out] == [False, True]
    one = VR.completions_from_response({"choices": [body["choices"][0]]}, [1], 3, tok, eos)  # greedy: copied
    assert len(one) == 3 and one[0] is not one[1] and all(o.completion_ids == [6, 2] for o in one)
    with pytest.raises(ValueError, match="asked the server for 3"):
        VR.completions_from_response(body, [1], 3, tok, eos)


# ---------------------------------------------------------------------------------------------
# Server mode against a local OpenAI-compatible server backed by the HF backend
# ---------------------------------------------------------------------------------------------


class FakeVLLMServer:
    """`/v1/models`, `/v1/completions` (token-id prompts), `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`
    in vLLM's request/response format, generating with the HF backend on 127.0.0.1.

    ids: "token_ids" (newer vLLM), "logprobs" (older: ids only as `token_id:<id>` logprob tokens),
    "text" (no ids at all)."""

    def __init__(self, base_model, tokenizer, name: str, api_key: str | None = None):
        self.tokenizer, self.api_key, self.ids = tokenizer, api_key, "token_ids"
        self.base = base_model.eval()
        self.models = {name: self.base}
        self.adapters: dict[str, str] = {}
        self.requests: list[dict] = []
        self.load_error: str | None = None  # set: every adapter load fails as vLLM reports it (HTTP 500)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                data = (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self):
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "bad key", "code": 401}})
                    return False
                return True

            def do_GET(self):
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": k, "object": "model"} for k in server.models]})
                else:
                    self._send(404, {"error": {"message": "not found", "code": 404}})

            def do_POST(self):
                if not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                handler = {
                    "/v1/completions": server.complete,
                    "/v1/load_lora_adapter": server.load,
                    "/v1/unload_lora_adapter": server.unload,
                }.get(self.path)
                self._send(*(handler(body) if handler else (404, {"error": {"message": "no route", "code": 404}})))

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.request_queue_size = 64
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def load(self, body):
        from peft import PeftModel

        name = body["lora_name"]
        if self.load_error:  # vLLM 0.33 wraps add_lora's exception as InternalServerError
            return 500, {"error": {"message": self.load_error, "type": "InternalServerError", "code": 500}}
        if name in self.models:
            return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded.", "code": 400}}
        self.models[name] = PeftModel.from_pretrained(copy.deepcopy(self.base), body["lora_path"]).eval()
        self.adapters[name] = body["lora_path"]
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body):
        name = body["lora_name"]
        if name not in self.adapters:
            return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found.", "code": 404}}
        del self.models[name], self.adapters[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def complete(self, body):
        model = self.models.get(body["model"])
        if model is None:
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist.", "code": 404}}
        prompt, n = body["prompt"], body.get("n", 1)
        assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
        sampling = SamplingConfig(
            temperature=body["temperature"],
            top_p=body.get("top_p", 1.0),
            top_k=body.get("top_k", 0),
            max_new_tokens=body["max_tokens"],
        )
        engine = HFRolloutEngine(model, self.tokenizer, 10**6, batch_size=n)
        assert set(body["stop_token_ids"]) == engine.eos_ids
        with torch.no_grad():
            comps = engine._generate_batch([prompt] * n, sampling)
        choices = []
        for i, c in enumerate(comps):
            choice = {
                "index": i,
                "text": c.text,
                "finish_reason": "stop" if c.finished else "length",
                "stop_reason": None,
                "logprobs": None,
            }
            if self.ids == "token_ids" and body.get("return_token_ids"):
                choice["token_ids"] = c.completion_ids
            if self.ids in ("token_ids", "logprobs") and body.get("logprobs") is not None:
                choice["logprobs"] = {
                    "tokens": [f"token_id:{t}" for t in c.completion_ids],
                    "token_logprobs": [0.0] * len(c.completion_ids),
                    "text_offset": [0] * len(c.completion_ids),
                    "top_logprobs": None,
                }
            choices.append(choice)
        return 200, {
            "id": "cmpl-test",
            "object": "text_completion",
            "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": sum(len(c.completion_ids) for c in comps)},
        }

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tiny_cfg, monkeypatch, tmp_path):
    """A fresh policy (perturbed adapter) and a server holding the same base model."""
    monkeypatch.setenv("SSP_TEST_VLLM_KEY", "sekrit")
    policy, tok = load_policy(tiny_cfg.model)
    _perturb_lora(policy, seed=3)
    base, _ = load_base_model(tiny_cfg.model)  # same seed: the same base weights as the policy's
    server = FakeVLLMServer(base, tok, "tiny-base", api_key="sekrit")
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "rollout.backend=vllm",
            "rollout.vllm.mode=server",
            f"rollout.vllm.base_url={server.url}/v1",
            "rollout.vllm.served_model_name=tiny-base",
            f"rollout.vllm.lora_dir={tmp_path / 'adapters'}",
            "rollout.vllm.api_key_env=SSP_TEST_VLLM_KEY",
            "rollout.vllm.max_concurrency=3",
        ],
    )
    yield policy, tok, cfg, server
    server.close()


def _ids(results):
    return [[(c.prompt_ids, c.completion_ids, c.finished, c.text, c.prompt_truncated) for c in cs] for cs in results]


def test_server_mode_matches_the_hf_backend_and_follows_updates(served, tmp_path):
    policy, tok, cfg, server = served
    engine = build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=cfg.model)
    assert isinstance(engine, VS.VLLMServerEngine) and not server.adapters  # loaded on first use
    hf = HFRolloutEngine(policy, tok, 64)

    got = engine.generate(REQUESTS, GREEDY, n=2)
    assert _ids(got) == _ids(hf.generate(REQUESTS, GREEDY, n=2))
    assert got[2][0].prompt_truncated and len(got[2][0].prompt_ids) <= 64
    assert list(server.adapters) == [engine.model_name] and engine.version == 1
    first = engine.model_name
    completions = [r for r in server.requests if r["path"] == "/v1/completions"]
    assert len(completions) == len(REQUESTS) and all(r["n"] == 1 for r in completions)  # greedy: asked once

    # An "update": new adapter weights; after refresh the server generates with them.
    before = _ids(hf.generate(REQUESTS[:2], GREEDY))
    _perturb_lora(policy, seed=4, scale=1.0)
    after_hf = _ids(hf.generate(REQUESTS[:2], GREEDY))
    assert after_hf != before  # the update changed the greedy answers, so the check below has teeth
    engine.refresh_weights()
    assert _ids(engine.generate(REQUESTS[:2], GREEDY)) == after_hf
    assert list(server.adapters) == [engine.model_name] != [first]  # new name loaded, old one unloaded
    assert not (Path(cfg.rollout.vllm.lora_dir) / first).exists()

    sampled = engine.generate(REQUESTS[:2], SamplingConfig(temperature=1.0, max_new_tokens=6), n=3)
    assert [len(s) for s in sampled] == [3, 3]
    assert all(
        1 <= len(c.completion_ids) <= 6 and c.finished == (c.completion_ids[-1] in engine.eos_ids)
        for s in sampled
        for c in s
    )
    assert engine.generate([], GREEDY) == []
    engine.close()
    assert not server.adapters


@pytest.mark.parametrize("ids", ["logprobs", "text"])
def test_server_mode_with_older_servers(served, ids):
    policy, tok, cfg, server = served
    server.ids = ids
    engine = build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=cfg.model)
    got = engine.generate(REQUESTS[:2], GREEDY)
    want = HFRolloutEngine(policy, tok, 64).generate(REQUESTS[:2], GREEDY)
    if ids == "logprobs":  # ids from "token_id:<id>" logprob tokens: still exact
        assert _ids(got) == _ids(want)
    else:  # only text: re-tokenised, flagged
        assert all(c[0].meta["token_ids_source"] == "retokenized" for c in got)
        assert [c[0].finished for c in got] == [c[0].finished for c in want]


def test_server_mode_errors_are_explained(served, monkeypatch, tiny_cfg):
    policy, tok, cfg, server = served
    bad = cfg.rollout.model_copy(update={"vllm": cfg.rollout.vllm.model_copy(update={"served_model_name": "nope"})})
    with pytest.raises(VS.VLLMServerError, match="serves .*tiny-base.*not 'nope'"):
        build_rollout_engine("vllm", policy, tok, 64, 8, rollout=bad, model_config=cfg.model)
    monkeypatch.setenv("SSP_TEST_VLLM_KEY", "wrong")
    with pytest.raises(VS.VLLMServerError, match="401"):
        build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=cfg.model)
    monkeypatch.setattr(VS.VLLMServerEngine, "RETRIES", 1)
    gone = cfg.rollout.model_copy(
        update={"vllm": cfg.rollout.vllm.model_copy(update={"base_url": "http://127.0.0.1:9"})}
    )
    with pytest.raises(VS.VLLMServerError, match="Is `vllm serve` running"):
        build_rollout_engine("vllm", policy, tok, 64, 8, rollout=gone, model_config=cfg.model)
    full = cfg.model.model_copy(update={"finetune": "full"})
    with pytest.raises(ValueError, match="colocated"):
        build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=full)


def test_failed_adapter_load_is_not_retried_and_names_the_server_flags(served, monkeypatch):
    policy, tok, cfg, server = served
    sleeps = []
    monkeypatch.setattr(VS.time, "sleep", sleeps.append)
    server.load_error = "LoRA rank 16 is greater than max_lora_rank 8."
    engine = build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=cfg.model)
    with pytest.raises(VS.VLLMServerError) as err:
        engine.generate(REQUESTS[:1], GREEDY)
    loads = [r for r in server.requests if r["path"] == "/v1/load_lora_adapter"]
    assert len(loads) == 1 and not sleeps  # a 500 from the adapter load is final: asked once, no backoff
    message = str(err.value)
    assert "HTTP 500" in message and "max_lora_rank 8" in message
    assert f"--enable-lora --max-lora-rank R (R ≥ the adapter's rank {cfg.model.lora.r}" in message
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in message


# ---------------------------------------------------------------------------------------------
# Colocated mode against a stand-in `vllm` module
# ---------------------------------------------------------------------------------------------


class _FakeLoadableModel:
    """Stands in for vLLM's model object: `load_weights` over HF names, unknown names rejected."""

    def __init__(self, hf_model):
        self.hf = hf_model
        self.loads = 0

    def load_weights(self, weights):
        params = dict(self.hf.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)  # KeyError for a name vLLM would not know
                self.loads += 1
        return set(params)


class _FakeLLM:
    def __init__(self, hf_model, tokenizer):
        self.model, self.tokenizer = _FakeLoadableModel(hf_model), tokenizer
        self.prefix_resets = 0
        self.calls = []

    def apply_model(self, func):
        return [func(self.model)]

    def reset_prefix_cache(self):
        self.prefix_resets += 1

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(params)
        engine = HFRolloutEngine(self.model.hf, self.tokenizer, 10**6, batch_size=params.n)
        sampling = SamplingConfig(temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_tokens)
        outs = []
        for p in prompts:
            comps = engine._generate_batch([p["prompt_token_ids"]] * params.n, sampling)
            outs.append(
                types.SimpleNamespace(
                    outputs=[
                        types.SimpleNamespace(
                            index=i,
                            token_ids=tuple(c.completion_ids),
                            finish_reason="stop" if c.finished else "length",
                            stop_reason=None,
                        )
                        for i, c in enumerate(comps)
                    ]
                )
            )
        return outs


class _SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_colocated_engine_pushes_merged_weights_and_matches_the_policy(tiny_cfg, monkeypatch):
    _fake_vllm(monkeypatch)
    policy, tok = load_policy(tiny_cfg.model)
    _perturb_lora(policy, seed=5)
    base, _ = load_base_model(tiny_cfg.model)
    llm = _FakeLLM(base.eval(), tok)
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["rollout.backend=vllm"])
    engine = VC.VLLMColocatedEngine(policy, tok, 64, cfg.rollout.vllm, cfg.model, max_model_len=128, llm=llm)
    hf = HFRolloutEngine(policy, tok, 64)
    assert _ids(engine.generate(REQUESTS, GREEDY, n=2)) == _ids(hf.generate(REQUESTS, GREEDY, n=2))
    assert llm.prefix_resets == 1 and llm.calls[0].n == 1  # pushed once before the first generate; greedy once
    pushed = llm.model.loads
    assert pushed == tiny_cfg.model.tiny.num_layers * len(tiny_cfg.model.lora.target_modules)
    _perturb_lora(policy, seed=6, scale=1.0)
    engine.refresh_weights()
    assert llm.prefix_resets == 2 and llm.model.loads == 2 * pushed
    assert _ids(engine.generate(REQUESTS[:2], GREEDY)) == _ids(hf.generate(REQUESTS[:2], GREEDY))
    assert engine.generate([], GREEDY) == []


def _fake_vllm(monkeypatch):
    fake = types.ModuleType("vllm")
    fake.SamplingParams = _SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.delenv(VC.MULTIPROCESSING_VAR, raising=False)  # restored (unset) after the test


def test_both_modes_send_the_same_sampling_parameters(served, monkeypatch):
    """The server request carries every sampling field the colocated engine gives `SamplingParams`, with the
    same values: nothing is left for the server to fill from the model's generation_config.json."""
    _fake_vllm(monkeypatch)
    policy, tok, cfg, server = served
    base, _ = load_base_model(cfg.model)
    llm = _FakeLLM(base.eval(), tok)
    colocated = VC.VLLMColocatedEngine(policy, tok, 64, cfg.rollout.vllm, cfg.model, max_model_len=128, llm=llm)
    remote = build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=cfg.model)
    for sampling in (SamplingConfig(temperature=0.8, top_p=0.9, top_k=7, max_new_tokens=6), GREEDY):
        server.requests.clear()
        llm.calls.clear()
        colocated.generate(REQUESTS[:1], sampling, n=2)
        remote.generate(REQUESTS[:1], sampling, n=2)
        sent = vars(llm.calls[0])
        body = next(r for r in server.requests if r["path"] == "/v1/completions")
        assert set(SERVER_DEFAULTED) <= set(sent)
        assert {k: body[k] for k in sent} == sent


def test_colocated_mode_refuses_a_multiprocessing_engine(tiny_cfg, monkeypatch):
    _fake_vllm(monkeypatch)
    policy, tok = load_policy(tiny_cfg.model)
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["rollout.backend=vllm"])
    llm = _FakeLLM(policy, tok)
    VC.VLLMColocatedEngine(policy, tok, 64, cfg.rollout.vllm, cfg.model, max_model_len=128, llm=llm)
    assert VC.os.environ[VC.MULTIPROCESSING_VAR] == "0"  # unset: kept in-process
    monkeypatch.setenv(VC.MULTIPROCESSING_VAR, "1")
    with pytest.raises(ValueError, match="VLLM_ENABLE_V1_MULTIPROCESSING=1 is set.*engine core in-process"):
        VC.VLLMColocatedEngine(policy, tok, 64, cfg.rollout.vllm, cfg.model, max_model_len=128, llm=llm)


def test_vllm_temperatures_above_two_are_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"rollout.defender.temperature=2.5: vLLM accepts temperatures in \[0, 2\]"):
        load_config(None, ["rollout.backend=vllm", "rollout.defender.temperature=2.5"])
    assert (
        load_config(None, ["rollout.backend=vllm", "rollout.attacker.temperature=2.0"]).rollout.attacker.temperature
        == 2
    )
    assert load_config(None, ["rollout.defender.temperature=2.5"]).rollout.defender.temperature == 2.5  # HF: allowed


def test_vllm_backend_needs_configs_and_the_extra(tiny_cfg, monkeypatch):
    policy, tok = load_policy(tiny_cfg.model)
    with pytest.raises(ValueError, match="rollout=cfg.rollout"):
        build_rollout_engine("vllm", policy, tok, 64, 8)
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["rollout.backend=vllm"])
    with pytest.raises(ImportError, match=r"ssp\[vllm\]"):
        build_rollout_engine("vllm", policy, tok, 64, 8, rollout=cfg.rollout, model_config=cfg.model)


def test_training_with_the_server_backend_matches_the_hf_backend(served, tmp_path):
    """Two greedy SSP steps through the real trainer: rollouts from the vLLM-server path (adapter refreshed
    after every update) give the same rewards and losses as HF `generate` on the training model."""
    from ssp.training.trainer import Trainer

    _, _, cfg, server = served
    # A large learning rate so that one update changes the greedy rollouts of step 2: a stale adapter on
    # the server would then change the rewards (checked by breaking the refresh on purpose).
    greedy = [
        "run.max_steps=2",
        "run.checkpoint_every=2",
        "rollout.attacker.temperature=0",
        "rollout.defender.temperature=0",
        "run.threads=1",
        "rl.learning_rate=0.05",
        "rollout.backend=hf",
    ]
    hf_cfg = load_config(REPO / "configs" / "tiny.yaml", greedy)
    vllm_cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        greedy
        + [
            "rollout.backend=vllm",
            "rollout.vllm.mode=server",
            f"rollout.vllm.base_url={server.url}",
            "rollout.vllm.served_model_name=tiny-base",
            f"rollout.vllm.lora_dir={tmp_path / 'adapters'}",
            "rollout.vllm.api_key_env=SSP_TEST_VLLM_KEY",
        ],
    )
    # The trainer hands the vLLM backend its rollout and model configs itself (rollout.engines.engine_for_run).
    Trainer(vllm_cfg, tmp_path / "vllm", progress=False).train()
    Trainer(hf_cfg, tmp_path / "hf", progress=False).train()

    def rows(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    loads = [r for r in server.requests if r["path"] == "/v1/load_lora_adapter"]
    assert len(loads) == 3  # first use, then after each of the two updates
    for a, b in zip(rows("vllm"), rows("hf"), strict=True):
        for key in ("reward/attacker", "reward/defender", "pool/size", "update_tokens", "generated_tokens"):
            assert a[key] == b[key], (key, a["step"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-9)
