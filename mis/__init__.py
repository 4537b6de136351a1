"""The hospital system's side: REST API, OpenAPI, webhooks outbox, call history."""
