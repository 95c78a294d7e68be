"""Benchmark loaders: local files or Hugging Face datasets, mapped onto one item type.

Over 500 lines: the table of built-in benchmark definitions sits beside the one loader that reads it.

A benchmark is named on the command line as ``NAME[:SPLIT[+SPLIT...]][=SOURCE]``:

* ``harmbench=../shared/data/harmbench_behaviors_text_val.csv`` — local file, default splits;
* ``xstest:safe`` — the Hugging Face default source, one split;
* ``jbb:harmful+benign=JailbreakBench/JBB-Behaviors`` — an explicit dataset id;
* ``generic:mine=data.jsonl`` — any CSV/JSONL/JSON/Parquet file; for ``generic`` the part after the
  colon is the label of the suite, and benchmark options (``--benchmark-option mine.prompt=question``)
  map its columns.

SOURCE is a local path when it exists or has a data-file suffix; otherwise a Hugging Face dataset id
(``hf:`` forces that reading), loaded with ``datasets.load_dataset``. Each (benchmark, split) pair is
a *suite*: ``harmbench/standard``, ``xstest/safe``; benchmarks with a single split are named alone
(``advbench``). Suites are ``harmful`` (attacked; ASR is measured) or ``benign`` (answered directly;
over-refusal is measured).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ssp.records import TABLE_SUFFIXES, RecordsError, read_records

Kind = Literal["harmful", "benign"]
DATA_SUFFIXES = (*TABLE_SUFFIXES, ".txt")

PROMPT_COLUMNS = ("prompt", "behavior", "goal", "forbidden_prompt", "instruction", "question", "text")
CATEGORY_COLUMNS = ("semanticcategory", "category", "type")
ID_COLUMNS = ("behaviorid", "id", "index")
CONTEXT_COLUMNS = ("contextstring", "context")


class BenchmarkError(ValueError):
    """A benchmark spec or source problem; the message names the benchmark, file or column."""


@dataclass(frozen=True)
class BenchmarkItem:
    id: str  # stable within the suite (the dataset's own id where it has one)
    suite: str
    benchmark: str
    split: str
    kind: Kind
    prompt: str  # the request as the benchmark writes it (contextual HarmBench: context, then behaviour)
    goal: str  # what the judge checks the answer against (the behaviour itself)
    category: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Suite:
    name: str
    benchmark: str
    split: str
    kind: Kind
    source: str
    items: list[BenchmarkItem]
    n_total: int  # items in the source before --limit

    def describe(self) -> dict[str, Any]:
        return {
            "suite": self.name,
            "benchmark": self.benchmark,
            "split": self.split,
            "kind": self.kind,
            "source": self.source,
            "n_total": self.n_total,
            "n_used": len(self.items),
        }


@dataclass(frozen=True)
class SplitDef:
    kind: Kind
    hf_config: str | None = None
    hf_split: str = "train"
    local_file: str | None = None  # file name inside a local folder source
    keep: Callable[[dict[str, str]], bool] | None = None  # row filter for files that hold several splits


@dataclass(frozen=True)
class BenchmarkDef:
    name: str
    title: str
    hf_id: str | None
    splits: dict[str, SplitDef]
    default_splits: tuple[str, ...]
    url: str = ""
    prompt_columns: tuple[str, ...] = PROMPT_COLUMNS
    category_columns: tuple[str, ...] = CATEGORY_COLUMNS


def _col(row: dict[str, Any], names: Iterable[str]) -> Any:
    """First non-empty value among `names`, matching column names case-insensitively."""
    lower = {str(k).lower(): v for k, v in row.items()}
    for name in names:
        v = lower.get(name.lower())
        if v is not None and str(v).strip() != "":
            return v
    return None


def _has_col(row: dict[str, Any], name: str) -> bool:
    return any(str(k).lower() == name.lower() for k in row)


def _harmbench_filter(split: str) -> Callable[[dict[str, Any]], bool]:
    # Local CSVs carry FunctionalCategory; the HF configs are already one split each (no such column).
    def keep(row: dict[str, Any]) -> bool:
        if not _has_col(row, "FunctionalCategory"):
            return True
        return str(_col(row, ["FunctionalCategory"]) or "").strip().lower() == split

    return keep


def _label_filter(label: str) -> Callable[[dict[str, Any]], bool]:
    def keep(row: dict[str, Any]) -> bool:
        if not _has_col(row, "label"):
            return True
        return str(_col(row, ["label"]) or "").strip().lower() == label

    return keep


BENCHMARKS: dict[str, BenchmarkDef] = {
    d.name: d
    for d in [
        BenchmarkDef(
            "harmbench",
            "HarmBench text behaviours (Mazeika et al. 2024)",
            "walledai/HarmBench",
            {
                "standard": SplitDef("harmful", "standard", "train", keep=_harmbench_filter("standard")),
                "contextual": SplitDef("harmful", "contextual", "train", keep=_harmbench_filter("contextual")),
                "copyright": SplitDef("harmful", "copyright", "train", keep=_harmbench_filter("copyright")),
            },
            ("standard",),
            "https://github.com/centerforaisafety/HarmBench",
        ),
        BenchmarkDef(
            "advbench",
            "AdvBench harmful behaviours (Zou et al. 2023)",
            "walledai/AdvBench",
            {"all": SplitDef("harmful", None, "train")},
            ("all",),
            "https://github.com/llm-attacks/llm-attacks",
        ),
        BenchmarkDef(
            "strongreject",
            "StrongREJECT forbidden prompts (Souly et al. 2024)",
            "walledai/StrongREJECT",
            {"all": SplitDef("harmful", None, "train")},
            ("all",),
            "https://github.com/alexandrasouly/strongreject",
        ),
        BenchmarkDef(
            "jbb",
            "JailbreakBench JBB-Behaviors (Chao et al. 2024)",
            "JailbreakBench/JBB-Behaviors",
            {
                "harmful": SplitDef("harmful", "behaviors", "harmful", "harmful-behaviors.csv"),
                "benign": SplitDef("benign", "behaviors", "benign", "benign-behaviors.csv"),
            },
            ("harmful", "benign"),
            "https://jailbreakbench.github.io",
            prompt_columns=("goal", "prompt", "behavior"),
            category_columns=("category",),
        ),
        BenchmarkDef(
            "xstest",
            "XSTest v2 (Röttger et al. 2024)",
            "walledai/XSTest",
            {
                "safe": SplitDef("benign", None, "test", keep=_label_filter("safe")),
                "unsafe": SplitDef("harmful", None, "test", keep=_label_filter("unsafe")),
            },
            ("safe", "unsafe"),
            "https://github.com/paul-rottger/exaggerated-safety",
        ),
        BenchmarkDef(
            "orbench",
            "OR-Bench (Cui et al. 2024)",
            "bench-llm/or-bench",
            {
                "hard": SplitDef("benign", "or-bench-hard-1k", "train", "or-bench-hard-1k.csv"),
                "toxic": SplitDef("harmful", "or-bench-toxic", "train", "or-bench-toxic.csv"),
            },
            ("hard", "toxic"),
            "https://huggingface.co/datasets/bench-llm/or-bench",
        ),
    ]
}
GENERIC = "generic"
GENERIC_OPTIONS = {
    "prompt": "column holding the request (default: auto-detect prompt/behavior/goal/instruction/question/text)",
    "goal": "column holding what the judge checks against (default: the prompt)",
    "category": "column holding the category (default: auto-detect category/type)",
    "id": "column holding a stable id (default: auto-detect id/index, else the row number)",
    "context": "column holding context prepended to the prompt (default: none)",
    "kind": "harmful (attacked, ASR) or benign (over-refusal); default harmful",
    "config": "Hugging Face dataset config name",
    "split": "Hugging Face split (default train)",
    "revision": "Hugging Face dataset revision",
}


BenchmarkLoader = Callable[["BenchmarkSpec"], list["Suite"]]
_PLUGINS: dict[str, BenchmarkDef | BenchmarkLoader] = {}


def plugin_benchmark(name: str) -> BenchmarkDef | BenchmarkLoader | None:
    """An installed plugin's benchmark (entry-point group `ssp.benchmarks`): a `BenchmarkDef`, loaded by the
    machinery below (Hugging Face id, local files, splits), or a loader `f(spec: BenchmarkSpec) -> list[Suite]`."""
    if name in BENCHMARKS or name == GENERIC:
        return None
    if name not in _PLUGINS:
        from ssp.plugins import BENCHMARKS as GROUP
        from ssp.plugins import load_plugin

        obj = load_plugin(GROUP, name)
        if obj is None:
            return None
        if isinstance(obj, BenchmarkDef) and obj.name != name:
            raise BenchmarkError(
                f"benchmark plugin {name!r} declares a BenchmarkDef named {obj.name!r}; the names must match"
            )
        if not isinstance(obj, BenchmarkDef) and not callable(obj):
            raise BenchmarkError(f"benchmark plugin {name!r} is a {type(obj).__name__}, not a BenchmarkDef or a loader")
        _PLUGINS[name] = obj
    return _PLUGINS[name]


def _definition(name: str) -> BenchmarkDef | None:
    found = BENCHMARKS.get(name) or plugin_benchmark(name)
    return found if isinstance(found, BenchmarkDef) else None


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    splits: tuple[str, ...]  # empty: the defaults; for generic: (label,)
    source: str | None
    options: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def text(self) -> str:
        s = self.name + (":" + "+".join(self.splits) if self.splits else "")
        return s + (f"={self.source}" if self.source else "")


_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?::(?P<splits>[A-Za-z0-9_.+-]+))?(?:=(?P<source>.+))?$")


def parse_benchmark_spec(text: str, options: dict[str, dict[str, str]] | None = None) -> BenchmarkSpec:
    m = _SPEC.match(text.strip())
    if not m:
        raise BenchmarkError(f"--benchmark {text!r}: expected NAME[:SPLIT[+SPLIT]][=SOURCE]")
    name = m.group("name").lower()
    splits = tuple(s for s in (m.group("splits") or "").split("+") if s)
    source = m.group("source")
    plugin = plugin_benchmark(name)
    if name != GENERIC and name not in BENCHMARKS and plugin is None:
        from ssp.plugins import BENCHMARKS as GROUP
        from ssp.plugins import plugin_names

        raise BenchmarkError(
            f"--benchmark {text!r}: unknown benchmark {name!r}; known: "
            f"{', '.join([*BENCHMARKS, GENERIC, *plugin_names(GROUP)])}"
        )
    if plugin is not None and not isinstance(plugin, BenchmarkDef):  # a loader reads its own splits and options
        return BenchmarkSpec(name, splits, source, dict((options or {}).get(name, {})))
    if name == GENERIC:
        if len(splits) > 1:
            raise BenchmarkError(f"--benchmark {text!r}: generic takes one label (generic:LABEL=SOURCE)")
        if not source:
            raise BenchmarkError(f"--benchmark {text!r}: generic needs a source (generic[:LABEL]=FILE_OR_HF_ID)")
        label = splits[0] if splits else GENERIC
        opts = dict((options or {}).get(label, {}))
        unknown = sorted(set(opts) - set(GENERIC_OPTIONS))
        if unknown:
            raise BenchmarkError(f"benchmark {label!r}: unknown option(s) {unknown}; known: {sorted(GENERIC_OPTIONS)}")
        if opts.get("kind", "harmful") not in ("harmful", "benign"):
            raise BenchmarkError(f"benchmark {label!r}: kind must be harmful or benign, got {opts['kind']!r}")
        return BenchmarkSpec(name, (label,), source, opts)
    bdef = _definition(name)
    assert bdef is not None, "unknown names and loader plugins were answered above"
    for s in splits:
        if s not in bdef.splits:
            raise BenchmarkError(f"--benchmark {text!r}: {name} has no split {s!r}; splits: {', '.join(bdef.splits)}")
    opts = dict((options or {}).get(name, {}))
    unknown = sorted(set(opts) - {"revision"})
    if unknown:
        raise BenchmarkError(f"benchmark {name!r}: unknown option(s) {unknown} (only generic benchmarks map columns)")
    return BenchmarkSpec(name, splits, source, opts)


# ------------------------------------------------------------------------------------------ sources


def is_local_source(source: str) -> bool:
    if source.startswith("hf:"):
        return False
    p = Path(source).expanduser()
    return p.exists() or p.suffix.lower() in DATA_SUFFIXES or source.startswith((".", "/", "~"))


def read_local_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a local benchmark file (any format `ssp.records` reads; TXT: one `prompt` per line)."""
    try:
        return read_records(path)
    except RecordsError as e:
        raise BenchmarkError(str(e)) from None


def load_hf_rows(dataset_id: str, config: str | None, split: str, revision: str | None = None) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset split (downloads into the datasets cache on first use)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise BenchmarkError("loading from the Hugging Face hub needs the `datasets` package") from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - network, auth, missing config: all reported the same way
        raise BenchmarkError(
            f"could not load Hugging Face dataset {dataset_id!r} (config {config!r}, split {split!r}): "
            f"{type(e).__name__}: {e}. Offline? Pass a local file: NAME=PATH"
        ) from None
    return [dict(r) for r in ds]


# ------------------------------------------------------------------------------------------ loading


def _make_items(
    rows: list[dict[str, Any]],
    suite: str,
    benchmark: str,
    split: str,
    kind: Kind,
    prompt_cols: tuple[str, ...],
    category_cols: tuple[str, ...],
    source: str,
    goal_cols: tuple[str, ...] = (),
    id_cols: tuple[str, ...] = ID_COLUMNS,
    context_cols: tuple[str, ...] = CONTEXT_COLUMNS,
) -> list[BenchmarkItem]:
    items: list[BenchmarkItem] = []
    seen: dict[str, int] = {}
    if rows:
        available = {str(k).lower() for r in rows[:50] for k in r}
        if not any(c.lower() in available for c in prompt_cols):
            raise BenchmarkError(
                f"{source}: no prompt column among {sorted(available)}; expected one of "
                f"{list(prompt_cols)} (generic benchmarks: --benchmark-option LABEL.prompt=COLUMN)"
            )
    for index, row in enumerate(rows):
        prompt = _col(row, prompt_cols)
        if prompt is None:
            continue
        behaviour = str(prompt).strip()
        context = _col(row, context_cols) if context_cols else None
        text = f"{str(context).strip()}\n\n---\n\n{behaviour}" if context else behaviour  # HarmBench's format
        goal_value = _col(row, goal_cols) if goal_cols else None
        goal = str(goal_value).strip() if goal_value is not None else behaviour
        raw_id = _col(row, id_cols) if id_cols else None
        item_id = str(raw_id).strip() if raw_id is not None else str(index)
        if item_id in seen:  # duplicate ids would break resume keys
            seen[item_id] += 1
            item_id = f"{item_id}#{seen[item_id]}"
        else:
            seen[item_id] = 0
        category = str(_col(row, category_cols) or "").strip() if category_cols else ""
        items.append(
            BenchmarkItem(
                item_id,
                suite,
                benchmark,
                split,
                kind,
                text,
                goal,
                category,
                {"row": index, **({"context": True} if context else {})},
            )
        )
    return items


def load_suites(spec: BenchmarkSpec) -> list[Suite]:
    """The suites a spec names, all items (apply `limit_suite` afterwards)."""
    if spec.name == GENERIC:
        return [_load_generic(spec)]
    bdef = _definition(spec.name)
    if bdef is None:
        loader = plugin_benchmark(spec.name)
        if loader is None:  # a spec built by hand rather than by parse_benchmark_spec
            raise BenchmarkError(f"unknown benchmark {spec.name!r}")
        assert not isinstance(loader, BenchmarkDef), "_definition returns every BenchmarkDef"
        suites = loader(spec)
        if not isinstance(suites, list) or not suites or not all(isinstance(x, Suite) for x in suites):
            raise BenchmarkError(f"benchmark plugin {spec.name!r}: the loader must return a non-empty list of Suite")
        return suites
    split_names = spec.splits or bdef.default_splits
    suites = []
    for split in split_names:
        sdef = bdef.splits[split]
        suite_name = spec.name if len(bdef.splits) == 1 else f"{spec.name}/{split}"
        rows, where = _rows_for(spec, bdef, split, sdef, several=len(split_names) > 1)
        if sdef.keep is not None:
            rows = [r for r in rows if sdef.keep(r)]
        items = _make_items(
            rows, suite_name, spec.name, split, sdef.kind, bdef.prompt_columns, bdef.category_columns, where
        )
        if not items:
            raise BenchmarkError(f"{where}: no items for {suite_name}")
        suites.append(Suite(suite_name, spec.name, split, sdef.kind, where, items, len(items)))
    return suites


def _rows_for(
    spec: BenchmarkSpec, bdef: BenchmarkDef, split: str, sdef: SplitDef, several: bool
) -> tuple[list[dict[str, Any]], str]:
    source = spec.source
    if source is None or not is_local_source(source):
        dataset_id = source[3:] if source and source.startswith("hf:") else (source or bdef.hf_id)
        if dataset_id is None:
            raise BenchmarkError(f"{bdef.name}: no default Hugging Face dataset; pass a local file")
        rows = load_hf_rows(dataset_id, sdef.hf_config, sdef.hf_split, spec.options.get("revision"))
        return rows, f"hf:{dataset_id}" + (f"[{sdef.hf_config}]" if sdef.hf_config else "") + f":{sdef.hf_split}"
    path = Path(source).expanduser()
    if path.is_dir():
        if sdef.local_file is None:
            raise BenchmarkError(f"{bdef.name}: {path} is a folder; pass the data file itself")
        path = path / sdef.local_file
        return read_local_rows(path), str(path)
    if sdef.local_file is not None and sdef.keep is None and several:
        raise BenchmarkError(
            f"{bdef.name}: {path} is one file but splits {'+'.join(bdef.default_splits)} are stored in separate "
            f"files ({', '.join(s.local_file or '' for s in bdef.splits.values())}); name the split "
            f"({bdef.name}:{split}=FILE) or pass the folder"
        )
    return read_local_rows(path), str(path)


def _load_generic(spec: BenchmarkSpec) -> Suite:
    label = spec.splits[0]
    o = spec.options
    source = spec.source or ""
    if is_local_source(source):
        rows = read_local_rows(Path(source).expanduser())
        where = source
    else:
        dataset_id = source[3:] if source.startswith("hf:") else source
        split = o.get("split", "train")
        rows = load_hf_rows(dataset_id, o.get("config"), split, o.get("revision"))
        where = f"hf:{dataset_id}" + (f"[{o['config']}]" if o.get("config") else "") + f":{split}"
    kind: Kind = o.get("kind", "harmful")  # type: ignore[assignment]
    prompt_cols = (o["prompt"],) if "prompt" in o else PROMPT_COLUMNS
    items = _make_items(
        rows,
        label,
        GENERIC,
        label,
        kind,
        prompt_cols,
        (o["category"],) if "category" in o else CATEGORY_COLUMNS,
        where,
        goal_cols=(o["goal"],) if "goal" in o else (),
        id_cols=(o["id"],) if "id" in o else ID_COLUMNS,
        context_cols=(o["context"],) if "context" in o else (),
    )
    if not items:
        raise BenchmarkError(f"{where}: no items")
    return Suite(label, GENERIC, label, kind, where, items, len(items))


def limit_suite(suite: Suite, limit: int | None, seed: int = 0) -> Suite:
    """Keep `limit` items, chosen by a seeded shuffle (a larger limit keeps every item a smaller one chose),
    listed in the source's order."""
    if limit is None or limit >= len(suite.items):
        return suite
    order = list(range(len(suite.items)))
    random.Random(f"{seed}:{suite.name}").shuffle(order)
    chosen = sorted(order[:limit])
    return Suite(
        suite.name,
        suite.benchmark,
        suite.split,
        suite.kind,
        suite.source,
        [suite.items[i] for i in chosen],
        suite.n_total,
    )


def load_benchmarks(specs: list[BenchmarkSpec], limit: int | None = None, seed: int = 0) -> list[Suite]:
    suites: list[Suite] = []
    for spec in specs:
        for suite in load_suites(spec):
            if any(s.name == suite.name for s in suites):
                raise BenchmarkError(f"suite {suite.name!r} named twice")
            suites.append(limit_suite(suite, limit, seed))
    return suites


def describe_benchmarks() -> list[dict[str, Any]]:
    """For `ssp eval --list-benchmarks` and the docs."""
    out: list[dict[str, Any]] = []
    from ssp.plugins import BENCHMARKS as GROUP
    from ssp.plugins import plugin_names

    for name in [*BENCHMARKS, *(n for n in plugin_names(GROUP) if n not in BENCHMARKS and n != GENERIC)]:
        d = _definition(name)
        if d is None:
            doc = (plugin_benchmark(name).__doc__ or "").strip().splitlines()
            out.append(
                {
                    "name": name,
                    "title": f"plugin loader: {doc[0] if doc else ''}",
                    "hf_id": None,
                    "splits": {},
                    "default": [],
                }
            )
            continue
        out.append(
            {
                "name": d.name,
                "title": d.title,
                "hf_id": d.hf_id,
                "splits": {k: v.kind for k, v in d.splits.items()},
                "default": list(d.default_splits),
            }
        )
    out.append(
        {
            "name": GENERIC,
            "title": "any CSV/TSV/JSONL/JSON/Parquet file or HF dataset; "
            "columns via --benchmark-option LABEL.KEY=VALUE",
            "hf_id": None,
            "splits": {"LABEL": "harmful|benign"},
            "default": [],
        }
    )
    return out
