"""Hard-negative mining (docs/method.md §2-3): adversarial images and the wrong answers they produce.

attack.py   PGD in [0,1] pixel space (sign steps, eps ball), uint8 quantisation, random-noise control
mine.py     the mining run: scan the pool, IIG-select, attack, decode, verify, keep pairs (resumable)
store.py    the on-disk layout: records.jsonl, pairs.jsonl (one reader: `read_pairs`), PNGs, settings
report.py   per-record statistics and the mining summary (attack success, prior agreement)

May import: mbpo_core.config, .data, .models, .scoring.
"""
