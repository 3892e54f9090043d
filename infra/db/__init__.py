"""Database layer shared by the API and the workers: models, sessions, leases. No fastapi here."""
