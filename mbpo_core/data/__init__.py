"""The data a run reads: dataset manifests and the answers they hold.

manifest.py   JSONL manifests (one sample a line), validated with line numbers; image paths
verifiers.py  per task (yes_no, multiple_choice, number, open): parse, normalise and check answers

May import: nothing of mbpo_core but this package (everything else builds on it). No torch.
"""
