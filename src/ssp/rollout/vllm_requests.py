"""What we send vLLM and how we read its answers (pure functions, shared by both vLLM engines).

Sampling settings map onto `vllm.SamplingParams` (colocated) and the JSON body of the OpenAI-compatible
`/v1/completions` (server) from ONE function, `sampling_params`, so both modes sample alike; answers
become `Completion`s with the HF backend's conventions (ids cut after the first end-of-turn token).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from ssp.config import SamplingConfig
from ssp.rollout.base import Completion


def samples_per_call(sampling: SamplingConfig, n: int) -> int:
    """Greedy decoding gives one answer; ask once and copy it (vLLM may refuse n > 1 when greedy)."""
    return 1 if sampling.temperature == 0 else n


def sampling_params(sampling: SamplingConfig, n: int, stop_token_ids: Iterable[int]) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams`, and the sampling fields of a `/v1/completions` body.

    Every field vLLM's server would otherwise fill from the model's `generation_config.json` is set
    (vLLM 0.33, `CompletionRequest._DEFAULT_SAMPLING_PARAMS`: repetition, presence and frequency
    penalties, temperature, top_p, top_k, min_p), so a server samples exactly as the colocated engine
    does. Values follow our config: top_k 0 (off, vLLM's own meaning of 0), no penalties, no min_p.
    Temperature 0 is greedy in vLLM as in HF.
    """
    sample = sampling.temperature > 0
    return {
        "n": samples_per_call(sampling, n),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sample else 1.0,
        "top_k": sampling.top_k if sample else 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": sampling.max_new_tokens,
        "stop_token_ids": list(stop_token_ids),
        "skip_special_tokens": True,
    }


def completion_request(
    prompt_ids: list[int], sampling: SamplingConfig, n: int, model: str, stop_token_ids: Iterable[int]
) -> dict[str, Any]:
    """The JSON body for vLLM's OpenAI-compatible `/v1/completions`, prompt given as token ids.

    Asks for the sampled ids twice over: `return_token_ids` (a `token_ids` list per choice) and
    `logprobs: 0` + `return_tokens_as_token_ids` (logprob tokens as "token_id:<id>"), so ids survive a
    proxy or server build that drops one of them.
    """
    body: dict[str, Any] = {"model": model, "prompt": [int(t) for t in prompt_ids], "stream": False}
    body.update(sampling_params(sampling, n, stop_token_ids))
    body.update({"return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True})
    return body


_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


def token_ids_from_choice(choice: dict[str, Any], tokenizer=None) -> tuple[list[int], str]:
    """(completion ids, where they came from) for one `/v1/completions` choice."""
    ids = choice.get("token_ids")
    if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
        return list(ids), "token_ids"
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if isinstance(tokens, list) and tokens:
        matches = [_TOKEN_ID.match(t) if isinstance(t, str) else None for t in tokens]
        found = [m for m in matches if m is not None]
        if len(found) == len(matches):
            return [int(m.group(1)) for m in found], "logprobs"
    if tokenizer is None:
        raise ValueError(
            "the server's answer carries no token ids (neither `token_ids` nor "
            "`token_id:<id>` logprob tokens) and no tokenizer was given to re-tokenise"
        )
    text = choice.get("text") or ""
    return tokenizer(text, add_special_tokens=False)["input_ids"], "retokenized"


def build_completion(
    token_ids: Iterable[int],
    finish_reason: str | None,
    stop_reason: Any,
    prompt_ids: list[int],
    tokenizer,
    eos_ids: list[int],
    prompt_truncated: bool = False,
    source: str = "engine",
) -> Completion:
    """A `Completion` with the HF backend's conventions from what vLLM returned.

    Ids are cut after the first end-of-turn token. vLLM keeps the stop token in `token_ids`; if an
    answer ended with "stop" but the stop token is missing (re-tokenised text, or a server that
    drops it) it is appended: `stop_reason` names it, or None means the model's EOS.
    `finished` is True exactly when the ids end with an end-of-turn token.
    """
    eos = set(eos_ids)
    ids = [int(t) for t in token_ids]
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    inferred = False
    if cut is not None:
        ids = ids[: cut + 1]
    elif (
        finish_reason == "stop"
        and eos_ids
        and (stop_reason is None or (isinstance(stop_reason, int) and stop_reason in eos))
    ):
        ids.append(stop_reason if isinstance(stop_reason, int) else eos_ids[0])
        inferred = True
    meta: dict[str, Any] = {}
    if source not in ("engine", "token_ids", "logprobs"):
        meta["token_ids_source"] = source
    if inferred:
        meta["eos_appended"] = True
    return Completion(
        prompt_ids=list(prompt_ids),
        completion_ids=ids,
        text=tokenizer.decode(ids, skip_special_tokens=True),
        finished=bool(ids) and ids[-1] in eos,
        prompt_truncated=prompt_truncated,
        meta=meta,
    )


def copies_of(c: Completion, n: int) -> list[Completion]:
    return [c] + [
        dataclasses.replace(c, prompt_ids=list(c.prompt_ids), completion_ids=list(c.completion_ids), meta=dict(c.meta))
        for _ in range(n - 1)
    ]


def completions_from_response(
    body: dict[str, Any], prompt_ids: list[int], n: int, tokenizer, eos_ids: list[int], prompt_truncated: bool = False
) -> list[Completion]:
    """The `n` completions of one single-prompt `/v1/completions` answer, in choice order."""
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
    if not choices:
        raise ValueError(f"the server answered without choices: {str(body)[:300]}")
    out = []
    for choice in choices:
        ids, source = token_ids_from_choice(choice, tokenizer)
        out.append(
            build_completion(
                ids,
                choice.get("finish_reason"),
                choice.get("stop_reason"),
                prompt_ids,
                tokenizer,
                eos_ids,
                prompt_truncated,
                source,
            )
        )
    if len(out) == 1 and n > 1:
        return copies_of(out[0], n)
    if len(out) != n:
        raise ValueError(f"asked the server for {n} samples, got {len(out)}")
    return out
