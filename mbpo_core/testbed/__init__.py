"""The testbed: a small world of coloured shapes where modality imbalance is real (docs/method.md).

scenes.py      objects, colours, shapes and scene rendering
world.py       the biased world: anchors whose partner almost always co-occurs
questions.py   question templates and their ground-truth answers per task
splits.py      the splits (sft, offline, online, pope_random/popular/adversarial, vqa, ...)
writer.py      a split on disk: PNGs beside a JSONL manifest
train_base.py  the small VLM trained from scratch on the biased data, so it sees and hallucinates
build.py       `build_testbed`: splits, base model, evaluation, and the property checks

May import: mbpo_core.data, .models, .evaluation.
"""
