"""Hallucination benchmarks from their official local files, scored as their reference code scores
(docs/benchmarks.md). No network: every loader reads files the user has.

common.py   BenchmarkItem (image + prompt + what the scorer needs), BenchmarkDataError (file and
            line / entry), the Benchmark interface every module below satisfies
pope.py     POPE question files; LMMS-Eval's prompt, POPE's evaluate.py metrics
chair.py    CHAIR_s / CHAIR_i / recall of captions against COCO instances (+ captions), Rohrbach
            et al.'s synonym table (chair_synonyms.txt)
amber.py    AMBER queries + annotations + its data/ word lists; its inference.py metrics
mme.py      MME subtask folders; calculation.py's acc, acc+, perception and cognition scores
runner.py   evaluate_benchmark: batched generation over mixed image sizes, then the scorer

`BENCHMARKS` maps a name to its module.
"""

from __future__ import annotations

from types import ModuleType

from mbpo_core.evaluation.benchmarks import amber, chair, mme, pope

BENCHMARKS: dict[str, ModuleType] = {m.NAME: m for m in (pope, chair, amber, mme)}
