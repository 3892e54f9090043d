"""/v1/keys: API keys over REST for admins (routes, schemas); the logic is api.auth's (service,
revocation), shared with the admin UI's keys page."""
