"""The backup pipeline: scan, frame, compress and hash chunks (in parallel), write them in order.

- central.py: one reader thread frames chunks; compression runs in a thread pool (GIL released).
- parallel.py + worker.py: worker processes each scan key ranges of the store and turn them into
  finished compressed chunks; the parent writes them in key order (shared-memory hand-off).
- planner.py: split keys at natural chunk boundaries; dynamic splitting balances the work.
"""
