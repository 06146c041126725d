"""flexsync: keeps a FlexPrice-compatible customer base and Stripe's customers in sync, both ways."""

__version__ = "0.1.0"
