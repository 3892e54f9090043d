"""Shared infrastructure of the service: what the web app (`api`) and the workers (`worker`) both
need, importing neither.

settings.py   environment settings (pydantic-settings) behind `get_settings()`
db/           SQLAlchemy models, sessions, migrations, leases
runs/         the run state machine (statuses, stages, the one transition function) and the
              run queries the worker and the sweeper use
events/       the run event log (append, read) and its live fan-out (Redis pub/sub)
jobs.py       the job contract: task names, queues, routing, Celery config, a request's job queue
outbox.py     the job outbox: jobs written with their rows, sent after the commit, relayed later
requests.py   the request channel of inference (API -> an inference worker)
replies.py    the reply transport of inference (worker -> waiting API request)
audit.py      the audit log of admin actions: action names and the one writer

May import: mbpo_core.config and light mbpo_core modules (never torch), sqlalchemy, celery, redis.
"""
