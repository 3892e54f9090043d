"""The MBPO method, usable without the service: no web, database or queue imports.

config.py     MBPOConfig: every setting of a run, validated and documented
data/         manifests, answer verifiers, the mined pairs file
models/       VLM adapters per family, differentiable preprocessing, device/dtype
scoring/      Image Information Gain
mining/       adversarial perturbation and hard-negative mining
training/     hybrid offline/online GRPO on TRL, and the baselines
evaluation/   POPE / VQA metrics, base vs aligned
serving/      model cache and batched generation for chat and spot-checks
pipeline/     a run's stages (validate -> score -> mine -> train -> evaluate) and `mbpo run`
testbed/      the CPU-scale world where modality imbalance is real and measurable

Imports go one way (an import-linter contract in pyproject.toml): pipeline -> testbed | serving
-> mining | training | evaluation -> scoring -> models -> data -> config; packages on one level
(a | b) never import each other.
"""
