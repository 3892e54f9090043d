"""The web app: FastAPI routes -> services -> repositories, one package per domain (auth, keys,
audit, datasets, models, runs, artefacts, health, inference with chat and spot-checks, admin = the
admin UI).

`app.create_app()` builds it; `deps.py` holds the request dependencies and the one commit point;
`rate_limits.py` the per-key limits of the expensive routes.
May import: infra, light parts of mbpo_core (config, data, models.info); never torch, never worker.
"""
