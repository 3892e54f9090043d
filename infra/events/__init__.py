"""Run events: the append-only log in the database (`store`) and its live fan-out over Redis
pub/sub (`publish`). The web side's SSE stream that reads both is `api.runs.stream`."""
