"""Scoring a model on evaluation manifests, and comparing two models (docs/method.md §6).

evaluate.py   per split: accuracy, unparsable rate and mean IIG of the ground-truth answers; on
              yes/no splits also POPE's precision, recall, F1 and yes-ratio
compare.py    base vs aligned: the change of every metric of every split
benchmarks/   POPE, CHAIR, AMBER and MME from their official local files, scored as their
              reference code scores (docs/benchmarks.md); a runner that batches mixed image sizes
lmms.py       POPE's local files as an LMMS-Eval task folder, to score a served model with
              LMMS-Eval offline (docs/benchmarks.md, "LMMS-Eval")

May import: mbpo_core.data, .models, .scoring.
"""
