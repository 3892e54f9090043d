"""Hallucination and general-ability benchmarks from their official local files, scored as their
reference code scores (docs/benchmarks.md). No network: every loader reads files the user has; the
one benchmark scored by a judge model (MMHal-Bench) calls the judge the user configures.

common.py   BenchmarkItem (image + prompt + what the scorer needs), BenchmarkDataError (file and
            line / entry), the Benchmark interface every module below satisfies
pope.py     POPE question files; LMMS-Eval's prompt, POPE's evaluate.py metrics
chair.py    CHAIR_s / CHAIR_i / recall of captions against COCO instances (+ captions), Rohrbach
            et al.'s synonym table (chair_synonyms.txt)
amber.py    AMBER queries + annotations + its data/ word lists; its inference.py metrics
mme.py      MME subtask folders; calculation.py's acc, acc+, perception and cognition scores
mmhal.py    MMHal-Bench's response template; its eval_gpt4.py judge prompt and rating parse
            (mmhal_judge_prompt.txt); `score` takes the judge as a keyword argument
judge.py    the judge: an OpenAI-compatible chat completions URL, with timeouts and retries
tsv.py      the TSV layout of the multiple-choice benchmarks: columns, base64 images decoded once
mmbench.py  MMBench; LMMS-Eval's prompt, VLMEvalKit's answer matching, CircularEval
mmstar.py   MMStar; LMMS-Eval's prompt, MMStar's exact_match and LMMS-Eval's aggregation
ai2d.py     AI2D; LMMS-Eval's prompt and exact_match
runner.py   evaluate_benchmark: batched generation over mixed image sizes, then the scorer

`BENCHMARKS` maps a name to its module.
"""

from __future__ import annotations

from types import ModuleType

from mbpo_core.evaluation.benchmarks import ai2d, amber, chair, mmbench, mme, mmhal, mmstar, pope

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m for m in (pope, chair, amber, mme, mmhal, mmbench, mmstar, ai2d)
}
