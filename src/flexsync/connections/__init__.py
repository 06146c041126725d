"""Stripe connections: Settings > Integrations. Keys encrypted at rest, one live connection per environment."""
