"""HF rollouts on the tiny model: batching, left padding, n samples, prefill, truncation policy."""

from ssp.config import SamplingConfig
from ssp.models.loader import load_policy
from ssp.rollout.base import ChatRequest
from ssp.rollout.chat import ChatEncoder
from ssp.rollout.hf import HFRolloutEngine


def test_generate_returns_n_samples_per_request_in_order(tiny_cfg):
    model, tok = load_policy(tiny_cfg.model)
    engine = HFRolloutEngine(model, tok, max_prompt_tokens=512, batch_size=3)
    reqs = [
        ChatRequest([{"role": "user", "content": "hi"}]),
        ChatRequest(
            [{"role": "user", "content": "a much longer question about the weather today"}], prefill="<prompt>"
        ),
    ]
    out = engine.generate(reqs, SamplingConfig(max_new_tokens=6, temperature=1.0), n=2)
    assert [len(o) for o in out] == [2, 2]
    for req, outs in zip(reqs, out):
        expected_prompt = engine.encoder.encode(req)[0]
        for c in outs:
            assert c.prompt_ids == expected_prompt
            assert 1 <= len(c.completion_ids) <= 6
            assert c.finished == (c.completion_ids[-1] in engine.eos_ids)
            ends = engine.eos_ids | {tok.pad_token_id}
            assert not ends & set(c.completion_ids[:-1])  # cut at the first end token, never padding inside
    assert tok.decode(out[1][0].prompt_ids).endswith("<prompt>")


def test_a_completion_that_ends_early_is_cut_at_its_end_token(tiny_cfg):
    """A row that stops before its batch neighbour gets padding from `generate`; the completion ends at its stop token.

    The random tiny model rarely samples its real EOS, so a token it does emit greedily is made a stop token.
    """
    model, tok = load_policy(tiny_cfg.model)
    engine = HFRolloutEngine(model, tok, max_prompt_tokens=512, batch_size=2)
    reqs = [
        ChatRequest([{"role": "user", "content": "hi"}]),
        ChatRequest([{"role": "user", "content": "a much longer question about the weather today"}]),
    ]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    first = engine.generate(reqs, greedy)[0][0].completion_ids
    cut = next(i for i in range(1, len(first)) if first[i] not in first[:i] and first[i] not in engine.eos_ids)
    stop = first[cut]
    engine.eos_ids = engine.eos_ids | {stop}
    short, other = (o[0] for o in engine.generate(reqs, greedy))
    assert short.completion_ids == first[: cut + 1] and short.finished
    assert short.text == tok.decode(first[: cut + 1], skip_special_tokens=True)
    for c in (short, other):
        assert not (engine.eos_ids | {tok.pad_token_id}) & set(c.completion_ids[:-1])
        assert c.finished == (c.completion_ids[-1] in engine.eos_ids)


def test_greedy_is_batch_independent(tiny_cfg):
    """Left padding must not change a greedy continuation (same result alone or in a padded batch)."""
    model, tok = load_policy(tiny_cfg.model)
    short = ChatRequest([{"role": "user", "content": "hi"}])
    long = ChatRequest([{"role": "user", "content": "tell me about the history of the printing press in Europe"}])
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    alone = HFRolloutEngine(model, tok, 512, batch_size=1).generate([short], greedy)[0][0]
    batched = HFRolloutEngine(model, tok, 512, batch_size=8).generate([long, short], greedy)[1][0]
    assert alone.completion_ids == batched.completion_ids


def test_long_prompts_are_truncated_keeping_the_chat_framing(tiny_cfg):
    model, tok = load_policy(tiny_cfg.model)
    enc = ChatEncoder(tok, max_prompt_tokens=60)
    ids, truncated = enc.encode(ChatRequest([{"role": "user", "content": "word " * 500}]))
    text = tok.decode(ids)
    assert truncated and len(ids) <= 60
    assert text.startswith("<|im_start|>user") and text.endswith("<|im_start|>assistant\n")
    ids2, truncated2 = enc.encode(ChatRequest([{"role": "user", "content": "short"}]))
    assert not truncated2 and len(ids2) < 60
