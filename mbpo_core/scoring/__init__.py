"""Image Information Gain (IIG, docs/method.md §1): how much an answer depends on the image.

iig.py   null images (gray, noise, blur) and the per-token log-prob gain of the real image over one

May import: mbpo_core.models (the adapter contract).
"""
