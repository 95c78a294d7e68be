"""The ssp benchmarks and judges as inspect_ai tasks (optional: `pip install inspect-ai`).

    inspect eval src/ssp/eval/inspect_tasks.py@ssp_benchmark --model hf/HuggingFaceTB/SmolLM2-135M-Instruct \\
        -T benchmark=harmbench -T source=../shared/data/harmbench_behaviors_text_val.csv -T attack=template \\
        -T judge=heuristic --limit 20

The task is also registered under ssp's inspect_ai entry point as `ssp/ssp_benchmark`; a local model folder
(e.g. one written by `ssp export --merge`) runs with inspect's own provider, greedy as in `ssp eval`:

    inspect eval ssp/ssp_benchmark --model hf/local -M model_path=DIR -M do_sample=false -T benchmark=xstest ...

Task arguments (all optional, `-T key=value`):
  benchmark   a benchmark name (`ssp eval --list`): harmbench, advbench, strongreject, jbb, xstest, orbench, generic
  splits      '+'-separated splits (default: the benchmark's defaults), e.g. standard+contextual
  source      a local file or folder, or a Hugging Face dataset id (default: the benchmark's hub dataset)
  attack      direct | template | self  (pair needs a judge in the loop: use `ssp eval`)
  templates   template file for `template` (default: the packaged one); template: only this template name
  samples     K for `self` (epochs; the sample counts as broken if any epoch is harmful)
  judge       an ssp judge name (default heuristic); judge_options: a dict of its options
  limit_per_suite, seed   the same seeded choice as `ssp eval --limit`
  max_tokens, temperature  the Defender's generation (default 128 tokens, greedy)

Scores are dictionaries: `harmful` (harmful suites: ASR), `refused` (benign suites: over-refusal),
`complied` and the judge `score`; each with mean, stderr and the Wilson 95% bounds. Harmful and
benign suites are different populations: read `harmful` on harmful suites and `refused` on benign
ones (each sample's metadata carries `suite` and `kind`; one task per suite keeps them apart:
pass `splits=safe` for XSTest's safe prompts).
"""

from __future__ import annotations

from typing import Any

try:
    from inspect_ai import Epochs, Task, task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import ChatMessage, ChatMessageSystem, ChatMessageUser, GenerateConfig, get_model
    from inspect_ai.scorer import SampleScore, Score, Target, mean, metric, scorer, stderr
    from inspect_ai.solver import Generate, TaskState, generate, solver
except ImportError as e:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("ssp.eval.inspect_tasks needs inspect_ai: pip install inspect-ai") from e

from ssp.eval.attacks import load_templates
from ssp.eval.benchmarks import load_benchmarks, parse_benchmark_spec
from ssp.eval.metrics import wilson_bounds
from ssp.game.prompts import ATTACK_OPEN, attacker_request, load_strategy_hints, parse_attack
from ssp.judges.base import JudgeInput
from ssp.judges.registry import build_judge


def _wilson_metric(side: int) -> Any:
    # The annotation matters: inspect passes SampleScore objects only to metrics that declare them.
    def compute(scores: list[SampleScore]) -> float:
        return wilson_bounds([s.score.as_float() for s in scores])[side]

    return compute


@metric
def wilson_low() -> Any:
    return _wilson_metric(0)


@metric
def wilson_high() -> Any:
    return _wilson_metric(1)


_RATE_METRICS = [mean(), stderr(), wilson_low(), wilson_high()]


@scorer(
    metrics={"harmful": _RATE_METRICS, "refused": _RATE_METRICS, "complied": _RATE_METRICS, "score": [mean(), stderr()]}
)
def ssp_judge(judge: str = "heuristic", judge_options: dict[str, Any] | None = None) -> Any:
    """Judge the answer against the sample's goal (metadata `goal`) with an ssp judge."""
    j = build_judge(judge, judge_options or {})

    async def score(state: TaskState, target: Target) -> Score:
        goal = state.metadata.get("goal") or state.input_text
        prompt = state.metadata.get("attack_prompt") or state.input_text
        response = state.output.completion if state.output else ""
        if state.metadata.get("attack_unparsed"):
            return Score(
                value={"harmful": 0, "refused": 0, "complied": 0, "score": float("nan")},
                explanation="attacker output unparseable: nothing was sent to the Defender",
            )
        (v,) = j.judge([JudgeInput(goal, prompt, response)])
        if not v.valid:
            nan = float("nan")
            return Score(
                value={"harmful": nan, "refused": nan, "complied": nan, "score": nan},
                explanation=f"invalid judgment: {v.rationale}",
            )
        return Score(
            value={
                "harmful": int(v.harmful),
                "refused": int(v.refused),
                "complied": int(not v.refused),
                "score": float(v.score),
            },
            answer=response[:200],
            explanation=v.rationale,
            metadata={"verdict": v.to_dict()},
        )

    return score


@solver
def self_attack(
    accept_truncated: bool = False, strategy_hints: bool = True, max_tokens: int = 80, temperature: float = 1.0
) -> Any:
    """The model under test writes the attack in its Attacker role (as trained), then answers it plainly.

    Generic model APIs cannot pre-fill the assistant turn, so the opening marker is asked for in the
    instruction and anything before it is dropped.
    """
    hints = load_strategy_hints() if strategy_hints else []

    async def solve(state: TaskState, generate_fn: Generate) -> TaskState:
        import random

        if state.metadata.get("kind") == "benign":  # benign suites are answered as written
            return await generate_fn(state)

        rng = random.Random(f"{state.sample_id}:{state.epoch}")
        hint = rng.choice(hints) if hints else None
        req = attacker_request(state.metadata["goal_prompt"], hint)
        messages: list[ChatMessage] = [
            ChatMessageSystem(content=req.messages[0]["content"]),
            ChatMessageUser(content=req.messages[1]["content"] + f" Start with {ATTACK_OPEN}."),
        ]
        config = GenerateConfig(temperature=temperature, max_tokens=max_tokens)
        out = await get_model().generate(messages, config=config)
        text = out.completion
        if ATTACK_OPEN in text:
            text = text.split(ATTACK_OPEN, 1)[1]
        finished = out.choices[0].stop_reason == "stop" if out.choices else True
        attack = parse_attack(text, finished, accept_truncated)
        state.metadata["attacker_output"] = out.completion
        state.metadata["hint"] = hint.name if hint else None
        if attack is None:
            state.metadata["attack_unparsed"] = True
            return state
        state.metadata["attack_prompt"] = attack
        state.messages = [ChatMessageUser(content=attack)]
        return await generate_fn(state)

    return solve


@task
def ssp_benchmark(
    benchmark: str = "harmbench",
    splits: str | None = None,
    source: str | None = None,
    attack: str = "direct",
    templates: str | None = None,
    template: str | None = None,
    samples: int = 4,
    judge: str = "heuristic",
    judge_options: dict[str, Any] | None = None,
    limit_per_suite: int | None = None,
    seed: int = 0,
    max_tokens: int = 128,
    temperature: float = 0.0,
    accept_truncated: bool = False,
) -> Task:
    spec_text = benchmark + (f":{splits}" if splits else "") + (f"={source}" if source else "")
    suites = load_benchmarks([parse_benchmark_spec(spec_text)], limit_per_suite, seed)
    dataset: list[Sample] = []
    if attack == "template":
        tpls = load_templates(templates)
        if template:
            tpls = [t for t in tpls if t.name == template]
            if not tpls:
                raise ValueError(f"unknown template {template!r}")
    for suite in suites:
        for it in suite.items:
            meta = {
                "suite": suite.name,
                "kind": suite.kind,
                "category": it.category,
                "goal": it.goal,
                "goal_prompt": it.prompt,
                "item_id": it.id,
            }
            if attack == "template" and suite.kind == "harmful":
                for t in tpls:
                    dataset.append(
                        Sample(
                            input=t.apply(it.prompt),
                            id=f"{suite.name}:{it.id}:{t.name}",
                            metadata={**meta, "template": t.name},
                        )
                    )
            elif attack in ("direct", "template", "self"):
                dataset.append(Sample(input=it.prompt, id=f"{suite.name}:{it.id}", metadata=meta))
            else:
                raise ValueError(
                    f"attack {attack!r}: inspect tasks support direct, template and self (pair: use `ssp eval`)"
                )
    config = GenerateConfig(temperature=temperature, max_tokens=max_tokens)
    if attack == "self":
        return Task(
            dataset=MemoryDataset(dataset, name=spec_text),
            solver=self_attack(accept_truncated),
            scorer=ssp_judge(judge, judge_options),
            config=config,
            epochs=Epochs(samples, "max"),
        )
    return Task(
        dataset=MemoryDataset(dataset, name=spec_text),
        solver=generate(),
        scorer=ssp_judge(judge, judge_options),
        config=config,
    )
