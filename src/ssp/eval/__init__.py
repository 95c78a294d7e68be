"""Evaluation: benchmarks, attacks, defenses, metrics with confidence intervals, reports.

Entry points: `ssp eval`, `ssp compare`, `ssp report`, `ssp export-attacks` (see docs/evaluation.md).

Modules
-------
benchmarks   loaders (HarmBench, AdvBench, StrongREJECT, JBB, XSTest, OR-Bench, generic CSV/JSONL)
attacks      direct, template, self, pair — one interface
defenses     the wrapper around the model under test (`none`; Self-Reminder / SmoothLLM plug in here)
metrics      Wilson intervals, rates, self-BLEU, embedding diversity
runner       `run_eval`: resumable generation into generations.jsonl, then results.json + report.html
results      aggregation of generations into results.json, comparison of result folders
report       self-contained HTML (shared by eval and training reports)
corpus       red-team corpus export from a training run or an eval folder
inspect_tasks  the benchmarks as inspect_ai tasks (optional dependency)
"""
