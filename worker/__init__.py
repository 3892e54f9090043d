"""Celery workers: queues by workload, thin task shells over plain functions, database leases.

app.py        the Celery app and what starts with a worker (the run sweeper, the outbox relay
              of infra.outbox, stale-job re-sending, the inference request consumer)
tasks.py      one thin shell per task name; imports go app -> tasks -> the modules below
datasets.py   dataset validation (cpu queue)
runs.py       a run's stages under a lease, recorded as events, metrics and checkpoints (gpu queue)
inference.py  chat completions and spot-checks with a per-process model cache: the consumer of
              the inference request channel (infra.requests), no Celery tasks (inference queue)
sweeper.py    recovers runs whose worker died (lease expired)

May import: infra, mbpo_core; never api (the web layer).
"""
