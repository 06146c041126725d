"""Tenants, environments and the API keys that scope every request to one of each."""
