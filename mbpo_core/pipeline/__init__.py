"""An MBPO run as stages: validate -> score -> mine -> train -> evaluate.

stages.py   the stage functions, each idempotent and resumable from the run directory (RunLayout)
spec.py     `mbpo run`: a run spec (YAML) that builds the testbed if asked and runs every stage

The service's worker (worker.runs) and `mbpo run` execute the same stages.
May import: every other package of mbpo_core (this is the top of the core).
"""
