"""The Stripe edge: the client factory, calls through `StripeCaller` and their shared rate limit, the field
mapping. Plain values in, Stripe objects out: no flexsync domain package is imported here."""
