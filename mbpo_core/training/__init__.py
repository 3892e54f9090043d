"""Hybrid offline/online GRPO training (docs/method.md §4-5) on top of TRL's GRPOTrainer.

advantages.py / losses.py  the math, pure tensor functions
data.py                    online manifest + mined pairs -> the mixed prompt dataset and sampler
arguments.py               MBPOConfig.train -> TRL GRPOConfig / peft LoraConfig
trainer.py                 HybridGRPOTrainer (GRPOTrainer subclass)
checkpoint.py              atomic checkpoints that load like base models
progress.py                progress events and cooperative cancellation
session.py                 train_policy(): directories in, aligned model out
rewards.py                 verified rewards (accuracy + format) as TRL reward functions
baselines.py               SFT and random-negative DPO, the comparisons MBPO must beat

May import: mbpo_core.config, .data, .models.
"""
