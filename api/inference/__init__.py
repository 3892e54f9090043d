"""The web side of inference (the whole path: docs/inference.md).

chat/         POST /v1/chat/completions (OpenAI-compatible, streaming)
spotchecks/   POST/GET /v1/spot-checks (answer vs the prior's answer, per model)
models.py     which model a name means (model:<id>, run:<id>[@step]) for the caller, cached briefly
images.py     image URLs checked and decoded (size, format, count)
dispatch.py   the request sent to the inference queue and its replies awaited (infra.replies)
repository.py the queries behind model resolution
"""
