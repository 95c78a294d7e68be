"""The chat template and prompt-truncation policy, shared by every rollout engine and by the updates."""

from __future__ import annotations

from ssp.rollout.base import ChatRequest


class ChatEncoder:
    """Applies the chat template and the explicit truncation policy shared by rollouts and updates.

    Truncation policy: a prompt longer than `max_prompt_tokens` keeps its chat framing and loses the
    END of its last message's content (the template's header and the assistant prefix stay intact).
    """

    def __init__(self, tokenizer, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens

    def render(self, request: ChatRequest) -> str:
        text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        return text + request.prefill

    def encode(self, request: ChatRequest) -> tuple[list[int], bool]:
        ids = self._ids(self.render(request))
        if len(ids) <= self.max_prompt_tokens:
            return ids, False
        last = request.messages[-1]
        content_ids = self._ids(last["content"])
        keep = max(0, len(content_ids) - (len(ids) - self.max_prompt_tokens))
        while True:
            cut = self.tokenizer.decode(content_ids[:keep])
            messages = [*request.messages[:-1], {**last, "content": cut}]
            ids = self._ids(self.render(ChatRequest(messages, request.prefill)))
            if len(ids) <= self.max_prompt_tokens or keep == 0:
                break
            keep = max(0, keep - max(1, len(ids) - self.max_prompt_tokens))
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"model.max_prompt_tokens={self.max_prompt_tokens} is shorter than the chat framing alone "
                f"({len(ids)} tokens)"
            )
        return ids, True

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids, as every engine uses them: the generation config's EOS and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    ids.discard(None)
    # The tokenizer's EOS first: it is the one appended if a server drops the stop token (see below).
    first = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return first + sorted(ids - set(first))
