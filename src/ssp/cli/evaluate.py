"""`ssp eval` (benchmarks × attacks, with a judge, into a results folder) and `ssp compare` (folders side by side).

    ssp eval --model embedded --benchmark harmbench=../shared/data/harmbench_behaviors_text_val.csv \\
             --benchmark xstest=../shared/data/xstest_prompts.csv --attack direct --attack template \\
             --attack self --judge heuristic --limit 16 --output runs/eval-base
    ssp compare runs/eval-base runs/eval-ssp
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssp.cli.common import console, fail
from ssp.config import apply_overrides

if TYPE_CHECKING:
    from ssp.config import EvalConfig
    from ssp.eval.runner import EvalSettings


def _kv(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """['a=1', 'b.c=x'] -> {'a': 1, 'b': {'c': 'x'}}, values parsed as YAML."""
    return apply_overrides({}, pairs or [], what)


def _benchmark_options(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise ValueError(f"--benchmark-option {pair!r}: expected LABEL.KEY=VALUE, e.g. mine.prompt=question")
        key, value = pair.split("=", 1)
        label, opt = key.split(".", 1)
        out.setdefault(label.strip(), {})[opt.strip()] = value
    return out


def _print_listing() -> None:
    from ssp.eval.attacks import available_attacks
    from ssp.eval.benchmarks import describe_benchmarks
    from ssp.eval.defenses import available_defenses
    from ssp.judges.registry import available_judges

    t = Table(title="benchmarks (--benchmark NAME[:SPLIT[+SPLIT]][=PATH_OR_HF_ID])")
    for col in ("name", "splits (kind)", "default splits", "Hugging Face id", "what"):
        t.add_column(col, overflow="fold")
    for b in describe_benchmarks():
        t.add_row(
            b["name"],
            ", ".join(f"{k} ({v})" for k, v in b["splits"].items()),
            "+".join(b["default"]),
            b["hf_id"] or "",
            b["title"],
        )
    Console().print(t)
    Console().print(
        f"attacks: {', '.join(available_attacks())}\ndefenses: {', '.join(available_defenses())}\n"
        f"judges: {', '.join(available_judges())}",
        highlight=False,
    )


def evaluate(
    output: Path | None = typer.Option(None, "--output", "-o", help="results folder (created; resumed if it exists)"),
    benchmark: list[str] = typer.Option(
        None, "--benchmark", "-b", help="NAME[:SPLIT[+SPLIT]][=PATH_OR_HF_ID] (repeatable; --list shows names)"
    ),
    attack: list[str] = typer.Option(
        None, "--attack", "-a", help="direct | template | self | pair (repeatable; default direct)"
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="'embedded', 'tiny', a Hugging Face id or a local folder (default: embedded)"
    ),
    adapter: str | None = typer.Option(
        None, "--adapter", help="LoRA adapter: a peft folder, a checkpoint folder or a run folder (latest checkpoint)"
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="ssp config: model, judge, Attacker sampling and attack parsing from it"
    ),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="override a config key, e.g. model.dtype=bfloat16"),
    eval_config: Path | None = typer.Option(
        None, "--eval-config", help="YAML file of eval settings (EvalConfig: the options below by name)"
    ),
    eval_overrides: list[str] = typer.Option(
        None, "--eval-set", help="override an eval setting, e.g. defender.top_p=0.9"
    ),
    judge: str | None = typer.Option(None, "--judge", "-j", help="judge name (default: the config's, else heuristic)"),
    judge_option: list[str] = typer.Option(None, "--judge-option", help="KEY=VALUE for the judge (repeatable)"),
    defense: str | None = typer.Option(
        None, "--defense", help="defense wrapped around the model under test (default none)"
    ),
    defense_option: list[str] = typer.Option(None, "--defense-option", help="KEY=VALUE for the defense (repeatable)"),
    benchmark_option: list[str] = typer.Option(
        None, "--benchmark-option", help="LABEL.KEY=VALUE, e.g. mine.prompt=question for generic:mine=FILE"
    ),
    attacker_model: str | None = typer.Option(
        None, "--attacker-model", help="attacker model for `pair` (default: the model under test)"
    ),
    attacker_adapter: str | None = typer.Option(None, "--attacker-adapter", help="LoRA adapter of the attacker model"),
    self_samples: int | None = typer.Option(None, "--self-samples", help="K: attacker samples per goal for `self` (4)"),
    pair_streams: int | None = typer.Option(None, "--pair-streams", help="parallel PAIR conversations per goal (1)"),
    pair_rounds: int | None = typer.Option(None, "--pair-rounds", help="PAIR refinement rounds (3)"),
    templates: str | None = typer.Option(None, "--templates", help="jailbreak template file (default: packaged)"),
    template_name: list[str] = typer.Option(None, "--template", help="use only this template (repeatable)"),
    strategy_hints: bool | None = typer.Option(
        None, "--strategy-hints/--no-strategy-hints", help="`self`: strategy hints as in training (default on)"
    ),
    accept_truncated: bool | None = typer.Option(
        None,
        "--accept-truncated-attacks/--reject-truncated-attacks",
        help="accept attacker outputs cut off by the token limit",
    ),
    temperature: float | None = typer.Option(None, "--temperature", help="Defender temperature (0 = greedy, default)"),
    top_p: float | None = typer.Option(None, "--top-p", help="Defender top-p (1.0)"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Defender answer length (128)"),
    attacker_temperature: float | None = typer.Option(None, "--attacker-temperature"),
    attacker_max_new_tokens: int | None = typer.Option(None, "--attacker-max-new-tokens"),
    limit: int | None = typer.Option(None, "--limit", "-n", help="items per suite (seeded random choice)"),
    seed: int | None = typer.Option(None, "--seed", help="item choice, strategy hints, sampling (0)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="sequences generated together (64)"),
    backend: str | None = typer.Option(None, "--backend", help="rollout engine: auto | native | hf (auto)"),
    dtype: str | None = typer.Option(None, "--dtype", help="native engine precision: bfloat16 | float32 (bfloat16)"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | mps (auto)"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="discard earlier generations in OUTPUT"),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="skip the embedding-distance diversity metric"),
    no_report: bool = typer.Option(False, "--no-report", help="skip report.html"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    list_: bool = typer.Option(False, "--list", help="list benchmarks, attacks, defenses and judges, then exit"),
) -> None:
    """Evaluate a model: ASR under attacks and over-refusal, with 95% CIs, into results.json + report.html."""
    if list_:
        _print_listing()
        return
    from ssp.config import ConfigError, load_eval_config

    try:
        options = _drop_unset(
            {
                "output": str(output) if output else None,
                "benchmarks": benchmark,
                "attacks": attack,
                "model": model,
                "adapter": adapter,
                "config": str(config) if config else None,
                "overrides": overrides,
                "judge": judge,
                "judge_options": _kv(judge_option, "--judge-option") if judge_option else None,
                "defense": defense,
                "defense_options": _kv(defense_option, "--defense-option") if defense_option else None,
                "benchmark_options": _benchmark_options(benchmark_option) if benchmark_option else None,
                "attacker_model": attacker_model,
                "attacker_adapter": attacker_adapter,
                "self_samples": self_samples,
                "pair_streams": pair_streams,
                "pair_rounds": pair_rounds,
                "templates": templates,
                "template_names": template_name,
                "strategy_hints": strategy_hints,
                "accept_truncated_attacks": accept_truncated,
                "defender": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens},
                "attacker_temperature": attacker_temperature,
                "attacker_max_new_tokens": attacker_max_new_tokens,
                "limit": limit,
                "seed": seed,
                "batch_size": batch_size,
                "backend": backend,
                "dtype": dtype,
                "device": device,
                "threads": threads,
                "overwrite": overwrite or None,
                "embeddings": False if no_embeddings else None,
                "report": False if no_report else None,
                "progress": False if quiet else None,
            }
        )
        ec = load_eval_config(eval_config, eval_overrides, options)
    except (ConfigError, ValueError) as e:
        fail(str(e))
    run_evaluation(ec)


def _drop_unset(tree: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line: None and empty lists (typer's "not given") left out, recursively."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_unset(value)
        if value is not None and value != [] and value != {}:
            out[key] = value
    return out


def eval_settings(ec: EvalConfig) -> EvalSettings:
    """The resolved settings of a run: adapters found, model, judge and Attacker settings from the ssp config."""
    from ssp.cli.common import config_from_cli
    from ssp.config import ModelConfig, SamplingConfig, load_config
    from ssp.eval.runner import AttackOptions, EvalSettings, resolve_adapter

    adapter_dir, adapter_cfg = resolve_adapter(ec.adapter)
    attacker_adapter_dir, _ = resolve_adapter(ec.attacker_adapter)
    cfg = config_from_cli(Path(ec.config) if ec.config else None, ec.overrides) if (ec.config or ec.overrides) else None
    model_cfg: ModelConfig
    model_seed = 0
    if cfg is not None:
        model_cfg, model_seed = cfg.model, cfg.run.seed
    elif adapter_cfg is not None and ec.model is None:
        run_cfg = load_config(adapter_cfg)
        model_cfg, model_seed = run_cfg.model, run_cfg.run.seed
        console.print(escape(f"model settings from {adapter_cfg} ({model_cfg.name_or_path})"), highlight=False)
    else:
        model_cfg = ModelConfig()
    if ec.model is not None:
        model_cfg = model_cfg.model_copy(update={"name_or_path": ec.model})
    judge_name = ec.judge or (cfg.judge.name if cfg else "heuristic")
    judge_opts = dict(cfg.judge.options) if cfg and (ec.judge is None or ec.judge == cfg.judge.name) else {}
    judge_opts.update(ec.judge_options)
    att = cfg.rollout.attacker if cfg else SamplingConfig(temperature=1.0, max_new_tokens=80)
    upd: dict[str, Any] = {}
    if ec.attacker_temperature is not None:
        upd["temperature"] = ec.attacker_temperature
    if ec.attacker_max_new_tokens is not None:
        upd["max_new_tokens"] = ec.attacker_max_new_tokens
    att = SamplingConfig.model_validate({**att.model_dump(), **upd})
    return EvalSettings(
        model=model_cfg,
        adapter=adapter_dir,
        model_seed=model_seed,
        attacker_model=model_cfg.model_copy(update={"name_or_path": ec.attacker_model}) if ec.attacker_model else None,
        attacker_adapter=attacker_adapter_dir,
        benchmarks=list(ec.benchmarks),
        benchmark_options=ec.benchmark_options,
        attacks=list(dict.fromkeys(ec.attacks)),
        attack=AttackOptions(
            self_samples=ec.self_samples,
            pair_streams=ec.pair_streams,
            pair_rounds=ec.pair_rounds,
            templates=ec.templates,
            template_names=list(ec.template_names) or None,
            strategy_hints=ec.strategy_hints
            if ec.strategy_hints is not None
            else (cfg.game.strategy_hints if cfg else True),
            accept_truncated_attacks=ec.accept_truncated_attacks
            if ec.accept_truncated_attacks is not None
            else (cfg.game.accept_truncated_attacks if cfg else False),
        ),
        judge=judge_name,
        judge_options=judge_opts,
        defense=ec.defense,
        defense_options=ec.defense_options,
        defender=ec.defender,
        attacker=att,
        limit=ec.limit,
        seed=ec.seed,
        batch_size=ec.batch_size,
        backend=ec.backend,
        dtype=ec.dtype,
        device=ec.device,
        threads=ec.threads,
        diversity_embeddings=ec.embeddings,
    )


def run_evaluation(ec: EvalConfig) -> None:
    """Run `ssp eval` from its config: errors are printed and exit with 2, Ctrl-C keeps finished items."""
    if not ec.benchmarks:
        fail("give at least one --benchmark (see --list)")
    if ec.output is None:
        fail("--output DIR is required")
    output = Path(ec.output)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ssp.eval.attacks import TemplateError
    from ssp.eval.benchmarks import BenchmarkError
    from ssp.eval.runner import EvalError, run_eval

    try:
        results = run_eval(
            eval_settings(ec),
            output,
            progress=ec.progress,
            overwrite=ec.overwrite,
            report=ec.report,
            log_fn=lambda m: console.print(escape(m), highlight=False),
        )
    except (EvalError, BenchmarkError, TemplateError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; finished items are kept: rerun the same command to resume")
        raise typer.Exit(130) from None
    print_results(results)
    console.print(
        f"results: [bold]{escape(str(output / 'results.json'))}[/]  "
        f"generations: {escape(str(output / 'generations.jsonl'))}"
        + (f"  report: [bold]{escape(str(output / 'report.html'))}[/]" if ec.report else ""),
        highlight=False,
    )


def print_results(results: dict[str, Any]) -> None:
    from ssp.eval.results import num, pct

    t = Table(title="evaluation (rates with Wilson 95% CI)")
    for col in ("suite", "attack", "n", "harmful ASR", "compliance", "refusal", "mean score", "invalid", "self-BLEU"):
        t.add_column(col, overflow="fold")
    for e in results.get("results", []):
        m = e["metrics"]
        asr = pct(m["asr"]) if e["kind"] == "harmful" else "—"
        t.add_row(
            escape(e["suite"]),
            escape(e["attack"]),
            str(e["n"]),
            asr,
            pct(m["compliance_rate"]),
            pct(m["refusal_rate"]),
            num(m.get("mean_score")),
            str(e["invalid_judgments"]),
            num((e.get("diversity") or {}).get("self_bleu"), 3),
        )
    Console().print(t)
    run = results.get("run") or {}
    if run:
        Console().print(
            f"wall time {run.get('wall_time_s')} s; {run.get('items_generated')} item(s) generated, "
            f"{run.get('items_resumed')} resumed",
            highlight=False,
        )


# -------------------------------------------------------------------------------------------- compare


def _labels(dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def compare(
    folders: list[Path] = typer.Argument(
        ..., help="result folders of `ssp eval` (or results.json files); the first is the baseline"
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="table file: .md (default), .csv, .json or .html; default compare-A-vs-B.md"
    ),
    metric: list[str] = typer.Option(
        None, "--metric", help="asr | compliance_rate | refusal_rate | sample_asr (repeatable)"
    ),
) -> None:
    """Side-by-side table of result folders: each rate with its CI, the delta to the first, CI overlap."""
    from ssp.eval.report import build_compare_html
    from ssp.eval.results import compare_results, compare_table, markdown_table

    if len(folders) < 2:
        fail("give at least two result folders")
    results = []
    for f in folders:
        path = f / "results.json" if f.is_dir() else f
        if not path.is_file():
            fail(f"{path}: no results.json (run `ssp eval --output {f}` first)")
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            fail(f"{path}: not valid JSON ({e})")
    labels = _labels([f if f.is_dir() else f.parent for f in folders])
    metrics = tuple(metric) if metric else ("asr", "compliance_rate", "refusal_rate")
    bad = set(metrics) - {"asr", "compliance_rate", "refusal_rate", "sample_asr"}
    if bad:
        fail(f"--metric: unknown {sorted(bad)}")
    for key, what in (("judge", "judges"), ("defender_sampling", "Defender sampling"), ("limit", "--limit")):
        vals = [json.dumps((r.get("settings") or {}).get(key), sort_keys=True) for r in results]
        if len(set(vals)) > 1:
            console.print(
                f"[yellow]note:[/] the folders differ in {what}: "
                + escape("; ".join(f"{lab}: {v}" for lab, v in zip(labels, vals))),
                highlight=False,
            )
    rows = compare_results(results, labels, metrics)
    header, cells = compare_table(rows, labels)
    t = Table(title=f"compare (baseline: {escape(labels[0])}; * = headline metric; Δ with Newcombe 95% CI)")
    for h in header:
        t.add_column(escape(h), overflow="fold")
    for r in cells:
        t.add_row(*map(escape, r))
    Console().print(t)
    if output is None:
        output = Path(f"compare-{labels[0]}-vs-{'-'.join(labels[1:])}.md".replace("/", "_"))
    suffix = output.suffix.lower()
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        output.write_text(
            json.dumps({"labels": labels, "folders": [str(f) for f in folders], "rows": rows}, indent=2),
            encoding="utf-8",
        )
    elif suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(cells)
        output.write_text(buf.getvalue(), encoding="utf-8")
    elif suffix in (".html", ".htm"):
        html = build_compare_html(header, cells, labels, [str(f) for f in folders], results)
        output.write_text(html, encoding="utf-8")
    else:
        settings_lines = []
        for label, r in zip(labels, results):
            s = r.get("settings", {})
            settings_lines.append(
                f"- **{label}**: model `{s.get('model', {}).get('name_or_path')}`, adapter "
                f"`{s.get('adapter')}`, defense `{(s.get('defense') or {}).get('name')}`, judge "
                f"`{(s.get('judge') or {}).get('name')}`, limit {s.get('limit')}"
            )
        output.write_text(
            f"# ssp compare (baseline: {labels[0]})\n\n"
            + "\n".join(settings_lines)
            + "\n\n"
            + markdown_table(header, cells)
            + "\n`*` headline metric of the suite. Δ: difference to the baseline in percentage points "
            "with Newcombe's 95% interval (independent samples); (sig.) when it excludes 0. CIs "
            "overlap: whether the two Wilson 95% intervals overlap.\n",
            encoding="utf-8",
        )
    console.print(f"written: [bold]{escape(str(output))}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("compare")(compare)
