"""Stripe webhook deliveries: receiving them (verify, store once, apply), claiming, retrying and replaying the
stored events, and the /v1/webhook-events API."""
