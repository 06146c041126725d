"""Idempotent writes: an `Idempotency-Key` on a write request records its answer in the write's own transaction,
so that a retry of the request is answered from the record instead of running again (writes.py), for the API
(the header, middleware.py) and the dashboard's forms (a hidden field)."""
