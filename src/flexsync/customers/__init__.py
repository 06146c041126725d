"""Customers: the FlexPrice-compatible customer API and its rules."""
