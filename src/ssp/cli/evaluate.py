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
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssp.cli.common import console, fail
from ssp.config import apply_overrides


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
    from ssp.judges.base import available_judges

    t = Table(title="benchmarks (--benchmark NAME[:SPLIT[+SPLIT]][=PATH_OR_HF_ID])")
    for col in ("name", "splits (kind)", "default splits", "Hugging Face id", "what"):
        t.add_column(col, overflow="fold")
    for b in describe_benchmarks():
        t.add_row(b["name"], ", ".join(f"{k} ({v})" for k, v in b["splits"].items()), "+".join(b["default"]),
                  b["hf_id"] or "", b["title"])
    Console().print(t)
    Console().print(f"attacks: {', '.join(available_attacks())}\ndefenses: {', '.join(available_defenses())}\n"
                    f"judges: {', '.join(available_judges())}", highlight=False)


def evaluate(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="results folder (created; resumed if it exists)"),
    benchmark: list[str] = typer.Option(None, "--benchmark", "-b",
                                        help="NAME[:SPLIT[+SPLIT]][=PATH_OR_HF_ID] (repeatable; --list shows names)"),
    attack: list[str] = typer.Option(["direct"], "--attack", "-a", help="direct | template | self | pair (repeatable)"),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="'embedded', 'tiny', a Hugging Face id or a local folder (default: embedded)"),
    adapter: Optional[str] = typer.Option(None, "--adapter",
                                          help="LoRA adapter: a peft folder, a checkpoint folder or a run folder (latest checkpoint)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="ssp config: model, judge, Attacker sampling and attack parsing from it"),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="override a config key, e.g. model.dtype=bfloat16"),
    judge: Optional[str] = typer.Option(None, "--judge", "-j", help="judge name (default: the config's, else heuristic)"),
    judge_option: list[str] = typer.Option(None, "--judge-option", help="KEY=VALUE for the judge (repeatable)"),
    defense: str = typer.Option("none", "--defense", help="defense wrapped around the model under test"),
    defense_option: list[str] = typer.Option(None, "--defense-option", help="KEY=VALUE for the defense (repeatable)"),
    benchmark_option: list[str] = typer.Option(None, "--benchmark-option",
                                               help="LABEL.KEY=VALUE, e.g. mine.prompt=question for generic:mine=FILE"),
    attacker_model: Optional[str] = typer.Option(None, "--attacker-model", help="attacker model for `pair` (default: the model under test)"),
    attacker_adapter: Optional[str] = typer.Option(None, "--attacker-adapter", help="LoRA adapter of the attacker model"),
    self_samples: int = typer.Option(4, "--self-samples", help="K: attacker samples per goal for `self`"),
    pair_streams: int = typer.Option(1, "--pair-streams", help="parallel PAIR conversations per goal"),
    pair_rounds: int = typer.Option(3, "--pair-rounds", help="PAIR refinement rounds"),
    templates: Optional[str] = typer.Option(None, "--templates", help="jailbreak template file (default: packaged)"),
    template_name: list[str] = typer.Option(None, "--template", help="use only this template (repeatable)"),
    strategy_hints: Optional[bool] = typer.Option(None, "--strategy-hints/--no-strategy-hints",
                                                  help="`self`: strategy hints as in training (default on)"),
    accept_truncated: Optional[bool] = typer.Option(None, "--accept-truncated-attacks/--reject-truncated-attacks",
                                                    help="accept attacker outputs cut off by the token limit"),
    temperature: float = typer.Option(0.0, "--temperature", help="Defender temperature (0 = greedy)"),
    top_p: float = typer.Option(1.0, "--top-p", help="Defender top-p"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Defender answer length"),
    attacker_temperature: Optional[float] = typer.Option(None, "--attacker-temperature"),
    attacker_max_new_tokens: Optional[int] = typer.Option(None, "--attacker-max-new-tokens"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="items per suite (seeded random choice)"),
    seed: int = typer.Option(0, "--seed", help="item choice, strategy hints, sampling"),
    batch_size: int = typer.Option(16, "--batch-size", help="sequences generated together"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
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
    if not benchmark:
        fail("give at least one --benchmark (see --list)")
    if output is None:
        fail("--output DIR is required")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ssp.cli.common import config_from_cli
    from ssp.config import ModelConfig, SamplingConfig, load_config
    from ssp.eval.attacks import TemplateError
    from ssp.eval.benchmarks import BenchmarkError
    from ssp.eval.runner import AttackOptions, EvalError, EvalSettings, resolve_adapter, run_eval

    try:
        adapter_dir, adapter_cfg = resolve_adapter(adapter)
        attacker_adapter_dir, _ = resolve_adapter(attacker_adapter)
        cfg = config_from_cli(config, overrides) if (config or overrides) else None
        model_cfg: ModelConfig
        model_seed = 0
        if cfg is not None:
            model_cfg, model_seed = cfg.model, cfg.run.seed
        elif adapter_cfg is not None and model is None:
            run_cfg = load_config(adapter_cfg)
            model_cfg, model_seed = run_cfg.model, run_cfg.run.seed
            console.print(escape(f"model settings from {adapter_cfg} ({model_cfg.name_or_path})"), highlight=False)
        else:
            model_cfg = ModelConfig()
        if model is not None:
            model_cfg = model_cfg.model_copy(update={"name_or_path": model})
        judge_name = judge or (cfg.judge.name if cfg else "heuristic")
        judge_opts = dict(cfg.judge.options) if cfg and (judge is None or judge == cfg.judge.name) else {}
        judge_opts.update(_kv(judge_option, "--judge-option"))
        att = cfg.rollout.attacker if cfg else SamplingConfig(temperature=1.0, max_new_tokens=80)
        upd: dict[str, Any] = {}
        if attacker_temperature is not None:
            upd["temperature"] = attacker_temperature
        if attacker_max_new_tokens is not None:
            upd["max_new_tokens"] = attacker_max_new_tokens
        att = SamplingConfig.model_validate({**att.model_dump(), **upd})
        settings = EvalSettings(
            model=model_cfg, adapter=adapter_dir, model_seed=model_seed,
            attacker_model=model_cfg.model_copy(update={"name_or_path": attacker_model}) if attacker_model else None,
            attacker_adapter=attacker_adapter_dir,
            benchmarks=list(benchmark), benchmark_options=_benchmark_options(benchmark_option),
            attacks=list(dict.fromkeys(attack)),
            attack=AttackOptions(
                self_samples=self_samples, pair_streams=pair_streams, pair_rounds=pair_rounds, templates=templates,
                template_names=list(template_name or []) or None,
                strategy_hints=strategy_hints if strategy_hints is not None else (cfg.game.strategy_hints if cfg else True),
                accept_truncated_attacks=accept_truncated if accept_truncated is not None else (
                    cfg.game.accept_truncated_attacks if cfg else False)),
            judge=judge_name, judge_options=judge_opts,
            defense=defense, defense_options=_kv(defense_option, "--defense-option"),
            defender=SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
            attacker=att, limit=limit, seed=seed, batch_size=batch_size, device=device, threads=threads,
            diversity_embeddings=not no_embeddings,
        )
        results = run_eval(settings, output, progress=not quiet, overwrite=overwrite, report=not no_report,
                           log_fn=lambda m: console.print(escape(m), highlight=False))
    except (EvalError, BenchmarkError, TemplateError, ValueError, FileNotFoundError) as e:
        fail(str(e))
        return
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; finished items are kept: rerun the same command to resume")
        raise typer.Exit(130)
    print_results(results)
    console.print(f"results: [bold]{escape(str(output / 'results.json'))}[/]  "
                  f"generations: {escape(str(output / 'generations.jsonl'))}"
                  + ("" if no_report else f"  report: [bold]{escape(str(output / 'report.html'))}[/]"), highlight=False)


def print_results(results: dict[str, Any]) -> None:
    from ssp.eval.report import num, pct

    t = Table(title="evaluation (rates with Wilson 95% CI)")
    for col in ("suite", "attack", "n", "harmful ASR", "compliance", "refusal", "mean score", "invalid", "self-BLEU"):
        t.add_column(col, overflow="fold")
    for e in results.get("results", []):
        m = e["metrics"]
        t.add_row(escape(e["suite"]), escape(e["attack"]), str(e["n"]), pct(m["asr"]) if e["kind"] == "harmful" else "—",
                  pct(m["compliance_rate"]), pct(m["refusal_rate"]), num(m.get("mean_score")),
                  str(e["invalid_judgments"]), num((e.get("diversity") or {}).get("self_bleu"), 3))
    Console().print(t)
    run = results.get("run") or {}
    if run:
        Console().print(f"wall time {run.get('wall_time_s')} s; {run.get('items_generated')} item(s) generated, "
                        f"{run.get('items_resumed')} resumed", highlight=False)


# -------------------------------------------------------------------------------------------- compare


def _labels(dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def compare(
    folders: list[Path] = typer.Argument(..., help="result folders of `ssp eval` (or results.json files); the first is the baseline"),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="table file: .md (default), .csv, .json or .html; default compare-A-vs-B.md"),
    metric: list[str] = typer.Option(None, "--metric", help="asr | compliance_rate | refusal_rate | sample_asr (repeatable)"),
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
            console.print(f"[yellow]note:[/] the folders differ in {what}: " + escape("; ".join(
                f"{lab}: {v}" for lab, v in zip(labels, vals))), highlight=False)
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
        output.write_text(json.dumps({"labels": labels, "folders": [str(f) for f in folders], "rows": rows}, indent=2),
                          encoding="utf-8")
    elif suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(cells)
        output.write_text(buf.getvalue(), encoding="utf-8")
    elif suffix in (".html", ".htm"):
        output.write_text(build_compare_html(header, cells, labels, [str(f) for f in folders], results), encoding="utf-8")
    else:
        settings_lines = []
        for label, r in zip(labels, results):
            s = r.get("settings", {})
            settings_lines.append(f"- **{label}**: model `{s.get('model', {}).get('name_or_path')}`, adapter "
                                  f"`{s.get('adapter')}`, defense `{(s.get('defense') or {}).get('name')}`, judge "
                                  f"`{(s.get('judge') or {}).get('name')}`, limit {s.get('limit')}")
        output.write_text(f"# ssp compare (baseline: {labels[0]})\n\n" + "\n".join(settings_lines) + "\n\n"
                          + markdown_table(header, cells)
                          + "\n`*` headline metric of the suite. Δ: difference to the baseline in percentage points with "
                            "Newcombe's 95% interval (independent samples); (sig.) when it excludes 0. CIs overlap: "
                            "whether the two Wilson 95% intervals overlap.\n", encoding="utf-8")
    console.print(f"written: [bold]{escape(str(output))}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("compare")(compare)
