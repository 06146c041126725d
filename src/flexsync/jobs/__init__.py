"""Sync jobs: the outbox (jobs written with the change they describe), the worker that runs them and the sweeps,
and the registry through which each domain tells the worker what its jobs and sweeps do."""
