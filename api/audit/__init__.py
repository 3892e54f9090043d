"""The audit log for admins: `GET /v1/audit` (routes), its query (repository, service) and
bodies (schemas). Entries are written by the actions themselves (`infra.audit.record_audit`)."""
