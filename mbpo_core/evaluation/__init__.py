"""Scoring a model on evaluation manifests (DESIGN 2.6).

evaluate.py   POPE metrics (accuracy, precision, recall, F1, yes-ratio), per-task accuracy, mean IIG

May import: mbpo_core.data, .models, .scoring.
"""
