"""Self-contained HTML reports: evaluation folders (`ssp eval`), training runs (`ssp report`), `ssp compare`.

Over 500 lines: the three pages share one template environment, escaping and plot helpers.

One file, no external resource: CSS inline, plots rendered by matplotlib (Agg) and embedded as base64 PNG. The
markup lives in jinja2 templates (eval/templates/) with autoescape on, so every value from a model, a dataset or a
judge is escaped by construction; control characters are made visible on the way out. This module turns the data
(read by eval/rundata.py) into what the templates show.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ssp.eval.results import num, pct
from ssp.eval.rundata import PoolReadError, PoolView, read_pool, read_training_run

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
TEXT_LIMIT = 3000  # characters of one model text shown (the rest is in generations.jsonl / exchanges.jsonl)


def visible(s: str) -> str:
    """Control characters and lone surrogates (invalid in HTML) shown as \\xNN / \\uNNNN."""

    def shown(m: re.Match) -> str:
        c = ord(m.group(0))
        return f"\\x{c:02x}" if c < 256 else f"\\u{c:04x}"

    return _CONTROL.sub(shown, s)


def _finalize(value: Any) -> Any:
    """Applied to every {{ value }} before autoescape: None prints nothing, text gets its control characters shown."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return visible(str(value))


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ssp.eval", "templates"),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def text_block(text: Any, limit: int = TEXT_LIMIT) -> Markup:
    """Model or dataset text, escaped, whitespace kept, cut to `limit` characters (the template macro)."""
    return Markup(_env().get_template("macros.html").module.text(text, limit))  # type: ignore[attr-defined]


def _render(template: str, title: str, subtitle: str = "", **data: Any) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _env().get_template(template).render(title=title, subtitle=subtitle, generated=generated, **data)


def figure_img(fig: Any, alt: str) -> dict[str, str]:
    """A matplotlib figure as base64 PNG for the `plot` macro."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return {"png": base64.b64encode(buf.getvalue()).decode("ascii"), "alt": alt}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------ eval report


def _eval_plot(results: list[dict[str, Any]]) -> dict[str, str] | None:
    if not results:
        return None
    plt = _plt()
    harmful = [e for e in results if e["kind"] == "harmful"]
    benign = [e for e in results if e["kind"] == "benign"]
    panels = [
        (harmful, "asr", "harmful-response ASR"),
        (harmful, "compliance_rate", "compliance rate"),
        (benign, "refusal_rate", "refusal rate on benign / safe prompts (over-refusal)"),
    ]
    panels = [p for p in panels if p[0]]
    height = max(2.2, 0.38 * max(len(p[0]) for p in panels) + 1.2)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), height), squeeze=False)
    for ax, (entries, key, title) in zip(axes[0], panels):
        labels = [f"{e['suite']} · {e['attack']}" for e in entries]
        vals, lo, hi = [], [], []
        for e in entries:
            m = e["metrics"][key]
            r = m["rate"] if m["rate"] is not None else 0.0
            vals.append(100 * r)
            lo.append(100 * (r - (m["ci_low"] if m["ci_low"] is not None else r)))
            hi.append(100 * ((m["ci_high"] if m["ci_high"] is not None else r) - r))
        ys = list(range(len(entries)))[::-1]
        ax.barh(
            ys,
            vals,
            xerr=[lo, hi],
            color="#c0392b" if key != "refusal_rate" else "#2e86c1",
            alpha=0.8,
            capsize=3,
            ecolor="#333",
        )
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of items (Wilson 95% CI)", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for y, v in zip(ys, vals):
            ax.text(min(v + 1, 88), y, f"{v:.0f}%", va="center", fontsize=7)
    fig.tight_layout()
    return figure_img(fig, "rates per suite and attack with 95% confidence intervals")


def _category_plot(entries: list[dict[str, Any]], suite: str) -> dict[str, str] | None:
    cats = sorted({c for e in entries for c in e.get("per_category", {})})
    if len(cats) < 2 or not entries:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(11, 1.2 + 0.9 * len(cats) * max(1, len(entries)) / 2), 2.8))
    width = 0.8 / len(entries)
    for j, e in enumerate(entries):
        key = e["headline"]
        vals = [100 * ((e["per_category"].get(c) or {}).get(key, {}).get("rate") or 0.0) for c in cats]
        ax.bar([i + j * width for i in range(len(cats))], vals, width, label=e["attack"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("%" + (" ASR" if entries[0]["kind"] == "harmful" else " refused"), fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_title(f"{suite}: per category", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_img(fig, f"per-category rates for {suite}")


def _summary_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for e in results:
        m = e["metrics"]
        div = e.get("diversity") or {}
        rows.append(
            [
                e["suite"],
                e["kind"],
                e["attack"],
                e["budget"].get("samples", 1),
                e["n"],
                pct(m["asr"]) if e["kind"] == "harmful" else "—",
                pct(m["compliance_rate"]),
                pct(m["refusal_rate"]),
                num(m.get("mean_score")),
                f"{e['invalid_judgments']} ({e['invalid_items']} items)",
                num(div.get("self_bleu"), 3),
                num(div.get("embedding_distance"), 3),
                num(e.get("attack_parse_rate")) if e["attack"] in ("self", "pair") else "—",
                e.get("cost", {}).get("defender_generations", "—"),
            ]
        )
    return rows


_STATUS = {  # (css class, label) of one sample in the examples
    "unsent": ("muted", "attacker output unparseable: not sent"),
    "invalid": ("muted", "invalid judgment"),
    "over_refused": ("bad", "refused (over-refusal)"),
    "answered": ("good", "answered"),
    "off_topic": ("", "answered off topic"),
    "harmful": ("bad", "harmful"),
    "refused": ("good", "refused"),
    "neither": ("", "not harmful, not refused"),
}


def _status(sample: dict[str, Any], benign: bool) -> str:
    v = sample.get("verdict") or {}
    if sample.get("prompt") is None:
        return "unsent"
    if not v.get("valid"):
        return "invalid"
    if benign:
        return "over_refused" if v.get("refused") else "answered" if v.get("on_topic") else "off_topic"
    return "harmful" if v.get("harmful") else "refused" if v.get("refused") else "neither"


def _example(rec: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    v = sample.get("verdict") or {}
    status_class, status = _STATUS[_status(sample, rec.get("kind") == "benign")]
    meta = {k: val for k, val in (sample.get("meta") or {}).items() if k not in ("attacker_output",)}
    texts = [("goal", rec.get("goal"))]
    if sample.get("prompt") != rec.get("goal"):
        texts.append(("prompt the Defender saw", sample.get("prompt")))
    if sample.get("prompt") is None and (sample.get("meta") or {}).get("attacker_output") is not None:
        texts.append(("attacker output", sample["meta"]["attacker_output"]))
    texts.append(("response", sample.get("response")))
    return {
        "item_id": rec["item_id"],
        "category": rec.get("category") or "",
        "index": sample.get("index"),
        "status_class": status_class,
        "status": status,
        "score": num(v.get("score")),
        "meta": json.dumps(meta, ensure_ascii=False) if meta else "",
        "texts": texts,
        "rationale": v.get("rationale", ""),
    }


def _example_groups(records: list[dict[str, Any]], per_group: int = 4) -> list[dict[str, Any]]:
    """A few generations per (suite, attack): broken items first, then refusals."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["suite"], r["attack"]), []).append(r)
    out = []
    for (suite, attack), recs in groups.items():

        def pick(r: dict[str, Any]) -> dict[str, Any]:
            samples = r["samples"]
            harmful = [s for s in samples if (s.get("verdict") or {}).get("harmful")]
            return (harmful or samples)[0]

        flag = "refused" if recs[0].get("kind") == "benign" else "broken"
        broken = [r for r in recs if (r.get("outcome") or {}).get(flag)]
        other = [r for r in recs if not (r.get("outcome") or {}).get(flag)]
        chosen = broken[: per_group // 2 + per_group % 2] + other[: per_group // 2]
        chosen += [r for r in broken + other if r not in chosen][: per_group - len(chosen)]
        out.append(
            {
                "summary": f"{suite} × {attack}: {len(broken)} of {len(recs)} items {flag}",
                "examples": [_example(r, pick(r)) for r in chosen],
            }
        )
    return out


def build_eval_report(results: dict[str, Any], records: list[dict[str, Any]]) -> str:
    s = results.get("settings", {})
    entries = results.get("results", [])
    run = results.get("run", {})
    model = s.get("model", {}).get("name_or_path", "?")
    judge = s.get("judge", {})
    settings = [
        ("model", model),
        ("adapter", s.get("adapter") or "none"),
        ("defense", json.dumps(s.get("defense", {}), ensure_ascii=False)),
        ("judge", judge.get("name", "?")),
        ("Defender sampling", json.dumps(s.get("defender_sampling", {}))),
        ("Attacker sampling", json.dumps(s.get("attacker_sampling", {}))),
        (
            "attacks (budgets)",
            "; ".join(
                f"{a}: {json.dumps({k: v for k, v in b.items() if k != 'templates'})}"
                for a, b in s.get("attacks", {}).items()
            ),
        ),
        (
            "benchmarks",
            "; ".join(
                f"{b['suite']} ({b['kind']}, {b['n_used']} of {b['n_total']}) from {b['source']}"
                for b in s.get("benchmarks", [])
            ),
        ),
        ("limit / seed", f"{s.get('limit')} / {s.get('seed')}"),
        (
            "wall time",
            f"{run.get('wall_time_s', '—')} s in the last invocation ({run.get('items_generated', '—')} "
            f"items generated, {run.get('items_resumed', 0)} resumed); generation time of all items "
            f"{run.get('item_time_s_total', '—')} s",
        ),
    ]
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_suite.setdefault(e["suite"], []).append(e)
    suites = []
    for suite, es in by_suite.items():
        cats = sorted({c for e in es for c in e.get("per_category", {})})
        suites.append(
            {
                "name": suite,
                "header": ["category"] + [f"{e['attack']}: {e['headline'].replace('_', ' ')}" for e in es],
                "rows": [[c] + [pct((e["per_category"].get(c) or {}).get(e["headline"])) for e in es] for c in cats],
                "plot": _category_plot(es, suite),
            }
        )
    breakdowns = [
        {
            "title": f"{e['suite']} × {e['attack']}: {key.replace('_', ' ')}",
            "rows": [(k, pct(v)) for k, v in data.items()],
        }
        for e in entries
        for key, data in (e.get("breakdown") or {}).items()
    ]
    return _render(
        "eval.html",
        f"SSP evaluation: {model}" + (" + adapter" if s.get("adapter") else ""),
        subtitle=f"defense {s.get('defense', {}).get('name', 'none')}, judge {judge.get('name', '?')}",
        settings=settings,
        summary_header=[
            "suite",
            "kind",
            "attack",
            "samples/item",
            "n",
            "harmful ASR",
            "compliance",
            "refusal",
            "mean score",
            "invalid judgments",
            "self-BLEU",
            "emb. distance",
            "parse rate",
            "Defender generations",
        ],
        summary_rows=_summary_rows(entries),
        plot=_eval_plot(entries),
        suites=suites,
        breakdowns=breakdowns,
        example_groups=_example_groups(records),
        settings_json=json.dumps(s, indent=2, ensure_ascii=False),
    )


# -------------------------------------------------------------------------------- training report

PLOT_GROUPS: list[tuple[str, list[tuple[str, str]], str]] = [
    (
        "Mean reward per role",
        [
            ("reward/attacker", "Attacker"),
            ("reward/defender", "Defender (all)"),
            ("reward/defender_attack", "Defender vs fresh attacks"),
            ("reward/defender_replay", "Defender vs replays"),
            ("reward/defender_benign", "Defender on benign"),
        ],
        "reward",
    ),
    (
        "Training ASR and benign refusal",
        [("train_asr", "train ASR"), ("replay_asr", "replay ASR"), ("benign_refusal", "benign refusal")],
        "rate",
    ),
    (
        "Experience pool size",
        [
            ("pool/size", "live entries"),
            ("pool/retired_total", "retired (total)"),
            ("pool/admitted_total", "admitted (total)"),
            ("pool/replays_total", "replays (total)"),
        ],
        "count",
    ),
    (
        "Pool UCB statistics",
        [
            ("pool/max_ucb", "max UCB"),
            ("pool/mean_reward", "mean r̄ (live)"),
            ("pool/mean_replays", "mean replays per entry"),
        ],
        "value",
    ),
    ("KL to the reference and loss", [("kl", "KL"), ("loss", "loss")], "value"),
    (
        "Time per phase",
        [
            ("time/attacker_generation", "attacker generation"),
            ("time/defender_generation", "defender generation"),
            ("time/judging", "judging"),
            ("time/update", "update"),
            ("time/replay", "replay"),
            ("time/step", "whole step"),
        ],
        "seconds",
    ),
]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", len(xs) + 1))
            ys.append(float(v))
    return xs, ys


def training_plots(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    figs: list[dict[str, str]] = []
    for title, keys, ylabel in PLOT_GROUPS:
        series = [(label, *_series(rows, key)) for key, label in keys]
        series = [s for s in series if s[1]]
        fig, ax = plt.subplots(figsize=(5.6, 3.0))
        if not series:
            ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)
        if title == "KL to the reference and loss" and len(series) == 2:
            (l1, x1, y1), (l2, x2, y2) = series
            ax.plot(x1, y1, marker="o", ms=3, label=l1, color="#8e44ad")
            ax.set_ylabel("KL", fontsize=8)
            ax2 = ax.twinx()
            ax2.plot(x2, y2, marker="s", ms=3, label=l2, color="#16a085")
            ax2.set_ylabel("loss", fontsize=8)
            ax2.tick_params(labelsize=7)
            lines = ax.get_lines() + ax2.get_lines()
            ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
        else:
            for label, xs, ys in series:
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            if series:
                ax.legend(fontsize=7)
            ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figs.append(figure_img(fig, title))
    return figs


def build_training_report(run: str | Path, top_n: int = 15) -> str:
    run = Path(run)
    data = read_training_run(run)
    pool_error = None
    try:
        pool = read_pool(run)
    except PoolReadError as e:
        pool, pool_error = PoolView(), str(e)
    top = [
        [
            e["id"],
            num(e.get("ucb"), 3),
            num(e.get("mean_reward"), 3),
            e.get("n_replays"),
            num(e.get("score"), 2),
            e.get("first_step"),
            text_block(e.get("goal"), 600),
            text_block(e.get("attack"), 1500),
            text_block((e.get("responses") or [""])[0], 800),
            text_block(e.get("rationale"), 600),
        ]
        for e in pool.top[:top_n]
    ]
    broke = []
    if not top:
        hits = [x for x in data.exchanges if x.get("kind") == "attack" and (x.get("verdict") or {}).get("harmful")]
        hits = sorted(hits, key=lambda x: -((x.get("verdict") or {}).get("score") or 0))[:top_n]
        broke = [
            [
                x.get("step"),
                num((x.get("verdict") or {}).get("score")),
                text_block(x.get("goal"), 600),
                text_block(x.get("prompt"), 1500),
                text_block(x.get("response"), 800),
                text_block((x.get("verdict") or {}).get("rationale"), 600),
            ]
            for x in hits
        ]
    retired_entries = [e for e in pool.entries if e.get("retired")]
    retired = [
        [
            e["id"],
            num(e.get("mean_reward"), 3),
            e.get("n_replays"),
            e.get("first_step"),
            text_block(e.get("goal"), 400),
            text_block(e.get("attack"), 800),
        ]
        for e in retired_entries[:top_n]
    ]
    last_step, recent = None, []
    if data.exchanges:
        last_step = max(x.get("step", 0) for x in data.exchanges)
        recent = [
            [
                x.get("kind"),
                x.get("outcome"),
                num(x.get("r_def"), 3),
                num(x.get("r_att"), 3),
                x.get("hint") or "",
                text_block(x.get("goal"), 400),
                text_block(x.get("prompt"), 800),
                text_block(x.get("response"), 800),
                text_block((x.get("verdict") or {}).get("rationale"), 400),
            ]
            for x in data.exchanges
            if x.get("step") == last_step
        ][:12]
    summary = [(k, json.dumps(v) if isinstance(v, (dict, list)) else num(v, 4)) for k, v in data.summary.items()]
    return _render(
        "training.html",
        f"SSP training run: {run.name}",
        subtitle=str(run.resolve()),
        summary=summary,
        n_steps=len(data.rows),
        plots=training_plots(data.rows) if data.rows else [],
        pool_error=pool_error,
        pool_stats=", ".join(f"{k} {num(v, 3)}" for k, v in pool.stats.items()) if pool.stats is not None else "",
        top=top,
        broke=broke,
        retired=retired,
        n_retired=len(retired_entries),
        recent=recent,
        last_step=last_step,
        config_text=data.config_text,
    )


# ------------------------------------------------------------------------------------ compare page


def build_compare_html(
    header: list[str], cells: list[list[str]], labels: list[str], folders: list[str], results: list[dict[str, Any]]
) -> str:
    rows = []
    for label, folder, r in zip(labels, folders, results):
        s = r.get("settings", {})
        rows.append(
            [
                label,
                folder,
                s.get("model", {}).get("name_or_path"),
                s.get("adapter") or "none",
                (s.get("defense") or {}).get("name"),
                (s.get("judge") or {}).get("name"),
                s.get("limit"),
            ]
        )
    return _render("compare.html", f"SSP comparison (baseline {labels[0]})", folders=rows, header=header, cells=cells)
