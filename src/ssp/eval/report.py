"""Self-contained HTML reports: evaluation folders (`ssp eval`) and training runs (`ssp report`).

One file, no external resource: CSS inline, plots rendered by matplotlib (Agg) and embedded as
base64 PNG. Every piece of text that comes from a model, a dataset or a judge passes through
`esc` (HTML-escaped); only markup built here is trusted (`Raw`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ssp.records import read_log

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
TEXT_LIMIT = 3000  # characters of one model text shown (the rest is in generations.jsonl / exchanges.jsonl)


class Raw(str):
    """Markup built by this module: not escaped again."""


def esc(x: Any) -> str:
    if isinstance(x, Raw):
        return x
    if x is None:
        return ""
    return html.escape(visible(str(x)), quote=True)


def visible(s: str) -> str:
    """Control characters and lone surrogates (invalid in HTML) shown as \\xNN / \\uNNNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 256 else f"\\u{ord(m.group(0)):04x}", s)


def tag(name: str, *children: Any, **attrs: Any) -> Raw:
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Raw(f"<{name}{attr}>" + "".join(esc(c) for c in children) + f"</{name}>")


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], cls: str = "data") -> Raw:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return Raw(f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def text_block(text: Any, limit: int = TEXT_LIMIT) -> Raw:
    """Model or dataset text, escaped, whitespace kept, cut to `limit` characters."""
    if text is None:
        return Raw('<span class="muted">(none)</span>')
    s = str(text)
    more = ""
    if len(s) > limit:
        more = f" … [{len(s) - limit} more characters]"
        s = s[:limit]
    return Raw(f'<pre class="text">{esc(s)}<span class="muted">{esc(more)}</span></pre>')


def figure_img(fig: Any, alt: str) -> Raw:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return Raw(f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin-top:22px}
table.data{border-collapse:collapse;font-size:13px;margin:8px 0}
table.data th,table.data td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
table.data th{background:#f3f3f3}table.data tr:nth-child(even) td{background:#fafafa}
table.kv td:first-child{font-weight:600;white-space:nowrap}
pre.text{white-space:pre-wrap;word-break:break-word;background:#f7f7f9;border:1px solid #e3e3e8;padding:6px 8px;
margin:2px 0;font-size:12px;max-height:320px;overflow:auto}
.muted{color:#888}.bad{color:#b00020;font-weight:600}.good{color:#1b7f3b;font-weight:600}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.example{border:1px solid #ddd;border-radius:4px;padding:8px;margin:8px 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.note{font-size:13px;color:#555}
"""


def page(title: str, body: Sequence[Any], subtitle: str = "") -> str:
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = "".join(esc(b) for b in body)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"note\">{esc(subtitle + ' · ' if subtitle else '')}generated {esc(generated)} by ssp</p>"
            f"{parts}</body></html>\n")


# -------------------------------------------------------------------------------------- formatting


def pct(d: dict[str, Any] | None, ci: bool = True) -> str:
    if not d or d.get("rate") is None:
        return "—"
    s = f"{100 * d['rate']:.1f}%"
    if ci and d.get("ci_low") is not None:
        s += f" [{100 * d['ci_low']:.1f}, {100 * d['ci_high']:.1f}]"
    return s + f" ({d['k']}/{d['n']})"


def num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def kv_table(pairs: Iterable[tuple[str, Any]]) -> Raw:
    return table(["setting", "value"], [(k, v) for k, v in pairs], cls="data kv")


# ------------------------------------------------------------------------------------ eval report


def _eval_plot(results: list[dict[str, Any]]) -> Raw | None:
    if not results:
        return None
    plt = _plt()
    harmful = [e for e in results if e["kind"] == "harmful"]
    benign = [e for e in results if e["kind"] == "benign"]
    panels = [(harmful, "asr", "harmful-response ASR"), (harmful, "compliance_rate", "compliance rate"),
              (benign, "refusal_rate", "refusal rate on benign / safe prompts (over-refusal)")]
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
        ax.barh(ys, vals, xerr=[lo, hi], color="#c0392b" if key != "refusal_rate" else "#2e86c1", alpha=0.8,
                capsize=3, ecolor="#333")
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of items (Wilson 95% CI)", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for y, v in zip(ys, vals):
            ax.text(min(v + 1, 88), y, f"{v:.0f}%", va="center", fontsize=7)
    fig.tight_layout()
    return figure_img(fig, "rates per suite and attack with 95% confidence intervals")


def _category_plot(entries: list[dict[str, Any]], suite: str) -> Raw | None:
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
        rows.append([
            e["suite"], e["kind"], e["attack"], e["budget"].get("samples", 1), e["n"],
            pct(m["asr"]) if e["kind"] == "harmful" else "—",
            pct(m["compliance_rate"]), pct(m["refusal_rate"]), num(m.get("mean_score")),
            f"{e['invalid_judgments']} ({e['invalid_items']} items)",
            num(div.get("self_bleu"), 3), num(div.get("embedding_distance"), 3),
            num(e.get("attack_parse_rate")) if e["attack"] in ("self", "pair") else "—",
            e.get("cost", {}).get("defender_generations", "—"),
        ])
    return rows


def _example(rec: dict[str, Any], sample: dict[str, Any]) -> Raw:
    v = sample.get("verdict") or {}
    benign = rec.get("kind") == "benign"
    if sample.get("prompt") is None:
        status = Raw('<span class="muted">attacker output unparseable: not sent</span>')
    elif not v.get("valid"):
        status = Raw('<span class="muted">invalid judgment</span>')
    elif benign:
        status = Raw('<span class="bad">refused (over-refusal)</span>' if v.get("refused")
                     else '<span class="good">answered</span>' if v.get("on_topic") else '<span>answered off topic</span>')
    elif v.get("harmful"):
        status = Raw('<span class="bad">harmful</span>')
    elif v.get("refused"):
        status = Raw('<span class="good">refused</span>')
    else:
        status = Raw('<span>not harmful, not refused</span>')
    meta = {k: val for k, val in (sample.get("meta") or {}).items() if k not in ("attacker_output",)}
    parts = [
        tag("div", tag("b", "item "), rec["item_id"], " · ", rec.get("category") or "", " · sample ",
            str(sample.get("index")), " · ", status, " · score ", num(v.get("score")),
            " · ", json.dumps(meta, ensure_ascii=False) if meta else ""),
        tag("div", tag("b", "goal")), text_block(rec.get("goal")),
    ]
    if sample.get("prompt") != rec.get("goal"):
        parts += [tag("div", tag("b", "prompt the Defender saw")), text_block(sample.get("prompt"))]
    if sample.get("prompt") is None and (sample.get("meta") or {}).get("attacker_output") is not None:
        parts += [tag("div", tag("b", "attacker output")), text_block(sample["meta"]["attacker_output"])]
    parts += [tag("div", tag("b", "response")), text_block(sample.get("response")),
              tag("div", tag("b", "judge: "), v.get("rationale", ""))]
    return tag("div", *parts, class_="example")


def _examples(records: list[dict[str, Any]], per_group: int = 4) -> list[Raw]:
    """A few generations per (suite, attack): broken items first, then refusals."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["suite"], r["attack"]), []).append(r)
    out: list[Raw] = []
    for (suite, attack), recs in groups.items():
        def pick(r: dict[str, Any]) -> dict[str, Any]:
            samples = r["samples"]
            harmful = [s for s in samples if (s.get("verdict") or {}).get("harmful")]
            return (harmful or samples)[0]

        benign = recs[0].get("kind") == "benign"
        flag = "refused" if benign else "broken"
        broken = [r for r in recs if (r.get("outcome") or {}).get(flag)]
        other = [r for r in recs if not (r.get("outcome") or {}).get(flag)]
        chosen = broken[: per_group // 2 + per_group % 2] + other[: per_group // 2]
        chosen += [r for r in broken + other if r not in chosen][: per_group - len(chosen)]
        body = [_example(r, pick(r)) for r in chosen]
        out.append(tag("details", tag("summary", f"{suite} × {attack}: {len(broken)} of {len(recs)} items {flag}"),
                       *body))
    return out


def build_eval_report(results: dict[str, Any], records: list[dict[str, Any]]) -> str:
    s = results.get("settings", {})
    entries = results.get("results", [])
    run = results.get("run", {})
    model = s.get("model", {}).get("name_or_path", "?")
    body: list[Any] = []
    body.append(tag("h2", "Settings"))
    judge = s.get("judge", {})
    body.append(kv_table([
        ("model", model), ("adapter", s.get("adapter") or "none"),
        ("defense", json.dumps(s.get("defense", {}), ensure_ascii=False)),
        ("judge", judge.get("name", "?")),
        ("Defender sampling", json.dumps(s.get("defender_sampling", {}))),
        ("Attacker sampling", json.dumps(s.get("attacker_sampling", {}))),
        ("attacks (budgets)", "; ".join(f"{a}: {json.dumps({k: v for k, v in b.items() if k != 'templates'})}"
                                        for a, b in s.get("attacks", {}).items())),
        ("benchmarks", "; ".join(f"{b['suite']} ({b['kind']}, {b['n_used']} of {b['n_total']}) from {b['source']}"
                                 for b in s.get("benchmarks", []))),
        ("limit / seed", f"{s.get('limit')} / {s.get('seed')}"),
        ("wall time", f"{run.get('wall_time_s', '—')} s in the last invocation ({run.get('items_generated', '—')} "
                      f"items generated, {run.get('items_resumed', 0)} resumed); generation time of all items "
                      f"{run.get('item_time_s_total', '—')} s"),
    ]))
    body.append(tag("h2", "Summary"))
    body.append(tag("p", "ASR: share of items with at least one answer the judge rates harmful (within the attack's "
                         "budget). Compliance: at least one answer not refused. Refusal: every answer refused. "
                         "Brackets: Wilson 95% confidence interval.", class_="note"))
    body.append(table(["suite", "kind", "attack", "samples/item", "n", "harmful ASR", "compliance", "refusal",
                       "mean score", "invalid judgments", "self-BLEU", "emb. distance", "parse rate",
                       "Defender generations"], _summary_rows(entries)))
    plot = _eval_plot(entries)
    if plot:
        body.append(plot)
    body.append(tag("h2", "Per category"))
    suites: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        suites.setdefault(e["suite"], []).append(e)
    for suite, es in suites.items():
        body.append(tag("h3", suite))
        cats = sorted({c for e in es for c in e.get("per_category", {})})
        header = ["category"] + [f"{e['attack']}: {e['headline'].replace('_', ' ')}" for e in es]
        rows = [[c] + [pct((e["per_category"].get(c) or {}).get(e["headline"])) for e in es] for c in cats]
        body.append(table(header, rows))
        cp = _category_plot(es, suite)
        if cp:
            body.append(cp)
    breakdowns = [(e, k, v) for e in entries for k, v in (e.get("breakdown") or {}).items()]
    if breakdowns:
        body.append(tag("h2", "Breakdowns"))
        for e, key, table_data in breakdowns:
            body.append(tag("h3", f"{e['suite']} × {e['attack']}: {key.replace('_', ' ')}"))
            body.append(table(["value", "rate"], [(k, pct(v)) for k, v in table_data.items()]))
    body.append(tag("h2", "Examples"))
    body.append(tag("p", "All text below is model or dataset output, shown escaped. Full records: generations.jsonl.",
                    class_="note"))
    body += _examples(records)
    body.append(tag("h2", "Full settings"))
    body.append(tag("details", tag("summary", "results.json settings"),
                    text_block(json.dumps(s, indent=2, ensure_ascii=False), limit=100_000)))
    return page(f"SSP evaluation: {model}" + (" + adapter" if s.get("adapter") else ""), body,
                subtitle=f"defense {s.get('defense', {}).get('name', 'none')}, judge {judge.get('name', '?')}")


# -------------------------------------------------------------------------------- training report

PLOT_GROUPS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("Mean reward per role", [("reward/attacker", "Attacker"), ("reward/defender", "Defender (all)"),
                              ("reward/defender_attack", "Defender vs fresh attacks"),
                              ("reward/defender_replay", "Defender vs replays"),
                              ("reward/defender_benign", "Defender on benign")], "reward"),
    ("Training ASR and benign refusal", [("train_asr", "train ASR"), ("replay_asr", "replay ASR"),
                                         ("benign_refusal", "benign refusal")], "rate"),
    ("Experience pool size", [("pool/size", "live entries"), ("pool/retired_total", "retired (total)"),
                              ("pool/admitted_total", "admitted (total)"), ("pool/replays_total", "replays (total)")], "count"),
    ("Pool UCB statistics", [("pool/max_ucb", "max UCB"), ("pool/mean_reward", "mean r̄ (live)"),
                             ("pool/mean_replays", "mean replays per entry")], "value"),
    ("KL to the reference and loss", [("kl", "KL"), ("loss", "loss")], "value"),
    ("Time per phase", [("time/attacker_generation", "attacker generation"),
                        ("time/defender_generation", "defender generation"), ("time/judging", "judging"),
                        ("time/update", "update"), ("time/replay", "replay"), ("time/step", "whole step")], "seconds"),
]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", len(xs) + 1))
            ys.append(float(v))
    return xs, ys


def training_plots(rows: list[dict[str, Any]]) -> list[Raw]:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    figs: list[Raw] = []
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


def pool_entries(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
    """(top live entries by UCB, pool stats, all entries) of a run's pool; empty when it has none."""
    path = run / "pool.sqlite"
    if not path.is_file():
        return [], None, []
    from ssp.config import ReplayConfig, load_yaml
    from ssp.replay.pool import ExperiencePool

    tree = load_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    cfg = ReplayConfig.model_validate(tree.get("replay", {}))
    try:
        with ExperiencePool(path, cfg, readonly=True) as pool:
            stats = pool.stats()
            top = [e.to_dict() for e in pool.top(20)]
            everything = [e.to_dict() for e in pool.all_entries()]
    except Exception as e:  # noqa: BLE001 - a pool written by another ssp version must not lose the report
        raise PoolReadError(f"{path}: cannot read the experience pool ({type(e).__name__}: {e})") from e
    return top, stats, everything


class PoolReadError(RuntimeError):
    pass


def build_training_report(run: str | Path, top_n: int = 15) -> str:
    run = Path(run)
    rows = read_log(run / "metrics.jsonl")
    exchanges = read_log(run / "exchanges.jsonl")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8")) if (run / "summary.json").is_file() else {}
    config_text = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").is_file() else ""
    body: list[Any] = []
    body.append(tag("h2", "Summary"))
    if summary:
        flat = []
        for k, v in summary.items():
            flat.append((k, json.dumps(v) if isinstance(v, (dict, list)) else num(v, 4)))
        body.append(kv_table(flat))
    else:
        body.append(tag("p", f"no summary.json (run unfinished?); {len(rows)} step(s) in metrics.jsonl", class_="note"))
    body.append(tag("h2", "Over training steps"))
    if rows:
        body.append(Raw('<div class="grid">' + "".join(training_plots(rows)) + "</div>"))
    else:
        body.append(tag("p", "metrics.jsonl is empty or missing", class_="note"))

    body.append(tag("h2", "Top discovered attacks"))
    try:
        top, stats, everything = pool_entries(run)
    except PoolReadError as e:
        top, stats, everything = [], None, []
        body.append(tag("p", str(e), class_="bad"))
    if stats is not None:
        body.append(tag("p", "Experience pool: " + ", ".join(f"{k} {num(v, 3)}" for k, v in stats.items()), class_="note"))
    shown = top[:top_n]
    if shown:
        body.append(tag("p", "Live pool entries in UCB order (hardest, least replayed first): the Defender failures "
                             "the loop keeps coming back to, with the judge's rationale.", class_="note"))
        trs = []
        for e in shown:
            trs.append([e["id"], num(e.get("ucb"), 3), num(e.get("mean_reward"), 3), e.get("n_replays"),
                        num(e.get("score"), 2), e.get("first_step"), text_block(e.get("goal"), 600),
                        text_block(e.get("attack"), 1500),
                        text_block((e.get("responses") or [""])[0], 800), text_block(e.get("rationale"), 600)])
        body.append(table(["id", "UCB", "mean r_def", "replays", "score", "first step", "goal", "attack",
                           "failing response", "judge rationale"], trs))
    else:
        broke = sorted([x for x in exchanges if x.get("kind") == "attack" and (x.get("verdict") or {}).get("harmful")],
                       key=lambda x: -((x.get("verdict") or {}).get("score") or 0))[:top_n]
        if broke:
            body.append(tag("p", "The pool is empty; the highest-scoring logged attacks instead:", class_="note"))
            body.append(table(["step", "score", "goal", "attack", "response", "judge rationale"],
                              [[x.get("step"), num((x.get("verdict") or {}).get("score")), text_block(x.get("goal"), 600),
                                text_block(x.get("prompt"), 1500), text_block(x.get("response"), 800),
                                text_block((x.get("verdict") or {}).get("rationale"), 600)] for x in broke]))
        else:
            body.append(tag("p", "No attack broke the Defender in the logged exchanges.", class_="note"))
    if everything:
        retired = [e for e in everything if e.get("retired")]
        if retired:
            body.append(tag("h3", f"Mastered (retired) entries: {len(retired)}"))
            body.append(table(["id", "mean r_def", "replays", "first step", "goal", "attack"],
                              [[e["id"], num(e.get("mean_reward"), 3), e.get("n_replays"), e.get("first_step"),
                                text_block(e.get("goal"), 400), text_block(e.get("attack"), 800)] for e in retired[:top_n]]))

    if exchanges:
        last = max(x.get("step", 0) for x in exchanges)
        recent = [x for x in exchanges if x.get("step") == last][:12]
        body.append(tag("h2", f"Logged exchanges of the last step ({last})"))
        body.append(table(["kind", "outcome", "r_def", "r_att", "hint", "goal", "prompt", "response", "judge rationale"],
                          [[x.get("kind"), x.get("outcome"), num(x.get("r_def"), 3), num(x.get("r_att"), 3),
                            x.get("hint") or "", text_block(x.get("goal"), 400), text_block(x.get("prompt"), 800),
                            text_block(x.get("response"), 800), text_block((x.get("verdict") or {}).get("rationale"), 400)]
                           for x in recent]))
    body.append(tag("h2", "Configuration"))
    body.append(tag("details", tag("summary", "config.yaml"), text_block(config_text, 100_000)))
    return page(f"SSP training run: {run.name}", body, subtitle=str(run.resolve()))


# ------------------------------------------------------------------------------------ compare page


def build_compare_html(header: list[str], cells: list[list[str]], labels: list[str], folders: list[str],
                       results: list[dict[str, Any]]) -> str:
    body: list[Any] = [tag("h2", "Folders")]
    rows = []
    for label, folder, r in zip(labels, folders, results):
        s = r.get("settings", {})
        rows.append([label, folder, s.get("model", {}).get("name_or_path"), s.get("adapter") or "none",
                     (s.get("defense") or {}).get("name"), (s.get("judge") or {}).get("name"), s.get("limit")])
    body.append(table(["label", "folder", "model", "adapter", "defense", "judge", "limit"], rows))
    body.append(tag("h2", "Rates"))
    body.append(tag("p", "* headline metric of the suite. Δ: difference to the baseline in percentage points with "
                         "Newcombe's 95% interval; (sig.) when it excludes 0. CIs overlap: whether the two Wilson 95% "
                         "intervals overlap.", class_="note"))
    body.append(table(header, cells))
    return page(f"SSP comparison (baseline {labels[0]})", body)
