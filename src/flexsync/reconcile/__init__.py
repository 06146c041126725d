"""Reconciliation runs: starting, carrying out and reporting them (the pass itself is stripe/reconcile.py)."""
