"""Run events: the append-only log (`store`), its live fan-out (`publish`), and the SSE stream
(`stream`, the only part that imports the web framework; the worker imports the other two)."""
