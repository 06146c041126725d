"""Outbound sync jobs: the outbox (jobs written with the change they describe) and the worker that runs them."""
