"""/v1/runs: launch, inspect, cancel and resume MBPO alignment runs."""
