"""Celery workers: queues by workload, thin tasks over plain functions, database leases."""
