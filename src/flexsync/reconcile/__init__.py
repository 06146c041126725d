"""Reconciliation runs: starting, carrying out and reporting them; the decisions per page are sync/reconcile.py."""
