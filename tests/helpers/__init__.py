"""Shared test helpers: real services (PostgreSQL, Redis, subprocesses) and dataset builders."""
