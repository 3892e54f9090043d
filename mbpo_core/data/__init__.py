"""The data a run reads: dataset manifests, the answers they hold, and the mined pairs.

manifest.py   JSONL manifests (one sample a line), validated with line numbers; image paths
verifiers.py  per task (yes_no, multiple_choice, number, open): parse, normalise and check answers
pairs.py      the mined pairs file (`pairs.jsonl`): its fields and its one reader

May import: nothing of mbpo_core but this package (everything else builds on it). No torch.
"""
