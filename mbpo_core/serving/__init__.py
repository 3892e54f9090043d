"""Serving a checkpoint for chat and spot-checks (the model side of docs/inference.md).

engine.py   model sources (base, checkpoint, LoRA), batched generation with streaming, spot-checks,
            and the per-process model cache with its batching thread

May import: mbpo_core.models, .scoring. The worker's inference task is the only caller.
"""
