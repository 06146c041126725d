"""Stripe webhook deliveries: receiving them (verify, store once, apply) and the /v1/webhook-events API."""
