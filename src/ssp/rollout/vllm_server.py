"""The server vLLM engine: rollouts from a separately started `vllm serve`, the policy sent as a LoRA adapter.

A remote server cannot take our tensors, so server mode is LoRA only. After every update rank 0
saves the adapter with peft under `rollout.vllm.lora_dir` (a folder the server can read), asks the
server to load it through `/v1/load_lora_adapter` under a NEW name per version
(`<adapter_name>-<run token>-v<k>`), switches generation to that name and unloads the previous one.
A new name is a new LoRA id in vLLM, so neither its adapter cache nor its prefix cache can serve
old weights. The server must run with `--enable-lora --max-lora-rank >= r` and
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Every rank waits (barrier) until the new adapter is live.

Requests carry every sampling parameter explicitly (`vllm_requests.sampling_params`, the same
values the colocated engine passes to `SamplingParams`): a field left out would be filled by the
server from the model's `generation_config.json` (vLLM's `--generation-config auto`), so the two
modes would sample differently. Completion ids come from `token_ids` (`return_token_ids`); only if
a server returns no ids are they re-tokenised from the text (flagged per completion and logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ssp import parallel
from ssp.config import SamplingConfig, VLLMRolloutConfig
from ssp.rollout.base import ChatRequest, Completion
from ssp.rollout.chat import ChatEncoder, eos_token_ids
from ssp.rollout.vllm_requests import completion_request, completions_from_response
from ssp.rollout.weights import lora_adapter_state, lora_layers, save_adapter

log = logging.getLogger(__name__)


class VLLMServerError(RuntimeError):
    """The vLLM server could not be reached or refused a request (message says which and why)."""


class VLLMServerEngine:
    """Rollouts from a separately started `vllm serve` (OpenAI-compatible), LoRA refreshed by name."""

    RETRIES = 3
    #: Statuses worth another try: rate limiting and a proxy or server that is (re)starting. Everything
    #: else below 500 is the answer; a 500 is retried only where it can be transient (generation).
    TRANSIENT = frozenset({429, 502, 503, 504})

    def __init__(
        self, model, tokenizer, max_prompt_tokens: int, options: VLLMRolloutConfig, served_model_name: str, client=None
    ):
        import httpx

        if not lora_layers(model):
            raise ValueError(
                "rollout.vllm.mode=server refreshes the policy as a LoRA adapter, but the policy has "
                "no LoRA layers (model.finetune=full: use rollout.vllm.mode=colocated)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, max_prompt_tokens)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.options = options
        self.base_url = options.base_url.rstrip("/")
        self.base_url = self.base_url.removesuffix("/v1")
        self.served_model_name = served_model_name
        self.rank, self.world = parallel.rank_world()
        headers = {}
        key = os.environ.get(options.api_key_env) if options.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = client or httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=options.max_concurrency),
        )
        self.lora_dir = Path(options.lora_dir or tempfile.mkdtemp(prefix="ssp-vllm-lora-"))
        self.version = 0
        self.model_name = served_model_name
        self.run_token = parallel.broadcast(secrets.token_hex(3) if self.rank == 0 else None)
        self._warned_retokenized = False
        if self.rank == 0:
            self._check_served_model()
        # The first generate loads the adapter: by then a resumed run has loaded its checkpoint.
        self._stale = True

    # -- HTTP --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, json: dict | None = None, retry_500: bool = True):
        """One HTTP call, retried (with backoff) on transport errors and transient statuses; any other
        answer is returned for the caller to judge. `retry_500=False`: a 500 is returned at once."""
        import httpx

        last: Exception | None = None
        for attempt in range(self.RETRIES):
            try:
                r = self.client.request(method, path, json=json)
            except httpx.TransportError as e:  # connection refused, reset, timeout
                last = e
            else:
                if r.status_code not in self.TRANSIENT and not (retry_500 and r.status_code >= 500):
                    return r
                last = VLLMServerError(f"{method} {self.base_url}{path}: HTTP {r.status_code}: {r.text[:500]}")
            time.sleep(min(8.0, 0.5 * 2**attempt))
        raise VLLMServerError(
            f"vLLM server at {self.base_url} failed {method} {path} {self.RETRIES} times; last "
            f"error: {last}. Is `vllm serve` running there (docs/gpu.md)?"
        ) from last

    def _check_served_model(self) -> None:
        r = self._request("GET", "/v1/models")
        if r.status_code != 200:
            raise VLLMServerError(f"GET {self.base_url}/v1/models: HTTP {r.status_code}: {r.text[:300]}")
        ids = [m.get("id") for m in r.json().get("data", [])]
        if self.served_model_name not in ids:
            raise VLLMServerError(
                f"the vLLM server at {self.base_url} serves {ids}, not "
                f"{self.served_model_name!r}; set rollout.vllm.served_model_name"
            )

    # -- refresh -----------------------------------------------------------------------------
    def refresh_weights(self) -> None:
        """Save the adapter (rank 0), load it under a new name, unload the previous one; all ranks wait."""
        state = lora_adapter_state(self.model)  # collective under ZeRO-3 / FSDP2
        version = self.version + 1
        name = f"{self.options.adapter_name}-{self.run_token}-v{version}"
        error = None
        if self.rank == 0:
            try:
                folder = save_adapter(self.model, self.lora_dir / name, state)
                # vLLM answers a failed load (LoRA not enabled, rank above --max-lora-rank, unreadable
                # folder) with HTTP 500: the same request would fail again, so it is not retried.
                r = self._request(
                    "POST",
                    "/v1/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(folder.resolve())},
                    retry_500=False,
                )
                if r.status_code != 200:
                    raise VLLMServerError(
                        f"vLLM refused adapter {name} from {folder}: HTTP {r.status_code}: "
                        f"{r.text[:300]}. {self._lora_hint()}"
                    )
                if self.version:
                    self._unload(self.model_name)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = f"{type(e).__name__}: {e}"
        error = parallel.broadcast(error)
        if error:
            raise VLLMServerError(f"LoRA refresh failed: {error}")
        parallel.barrier()
        self.version, self.model_name = version, name
        self._stale = False

    def _lora_hint(self) -> str:
        rank = max((c.r for c in getattr(self.model, "peft_config", {}).values()), default=None)
        return (
            "Start the server with --enable-lora --max-lora-rank R (R ≥ the adapter's rank"
            f"{f' {rank}' if rank else ''}, model.lora.r) and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its "
            f"environment, and make {self.lora_dir} readable by it (rollout.vllm.lora_dir)"
        )

    def _unload(self, name: str) -> None:
        r = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code != 200:
            log.warning("vLLM did not unload adapter %s: HTTP %s %s", name, r.status_code, r.text[:200])
        shutil.rmtree(self.lora_dir / name, ignore_errors=True)

    # -- generation --------------------------------------------------------------------------
    def _complete(self, job: tuple[list[int], bool], sampling: SamplingConfig, n: int) -> list[Completion]:
        ids, truncated = job
        body = completion_request(ids, sampling, n, self.model_name, self.eos_ids)
        r = self._request("POST", "/v1/completions", json=body)
        if r.status_code != 200:
            raise VLLMServerError(
                f"POST {self.base_url}/v1/completions (model {self.model_name}): HTTP {r.status_code}: {r.text[:500]}"
            )
        comps = completions_from_response(r.json(), ids, n, self.tokenizer, self.eos_ids, truncated)
        if not self._warned_retokenized and any(c.meta.get("token_ids_source") == "retokenized" for c in comps):
            self._warned_retokenized = True
            log.warning(
                "the vLLM server returned no token ids; completions are re-tokenised text, which may differ "
                "from the sampled ids (upgrade vLLM for `return_token_ids`)"
            )
        return comps

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        if self._stale:  # before the early return: every rank must take part (barrier)
            self.refresh_weights()
        if not requests:
            return []
        jobs = [self.encoder.encode(r) for r in requests]
        # One request per prompt (n samples each); vLLM batches concurrent requests itself.
        with ThreadPoolExecutor(max_workers=min(self.options.max_concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self._complete(job, sampling, n), jobs))

    def close(self) -> None:
        """Unload the current adapter and close the connection pool (optional; the server keeps running)."""
        if self.rank == 0 and self.version:
            with contextlib.suppress(Exception):
                self._unload(self.model_name)
        self.client.close()
