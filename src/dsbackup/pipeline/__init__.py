"""The backup pipeline: scan, frame, compress and hash chunks (in parallel), write them in order.

- central.py: one reader thread frames chunks; compression runs in a thread pool (GIL released).
- parallel.py + worker.py: worker processes each scan key ranges of the store and turn them into
  finished compressed chunks; the parent writes them in key order (shared-memory hand-off).
- zygote.py: the fork of the CLI the workers are forked from (no new interpreter).
- forkserver.py: the server the workers are forked from where there is no zygote (the CLI may
  start it early).
- sources.py: what a worker scans with (native LMDB scanner, datastore fast path), and the
  planner's walk that cuts the keys into stripes; an incremental backup plans and frames
  with the same sources in its own process.
- scanchoice.py: central or parallel, and forking the zygote or starting the fork server early.
"""
