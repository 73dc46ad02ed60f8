"""The engine: backup and restore of whole datastores through the archive layer — the managers
behind the public API (dsbackup.BackupManager); a backup is a plan (plan.py) and a chunk stream
(full.py: store every chunk; incremental.py: store or reference each) written by one loop
(write.py) with one manifest and metadata builder (manifest.py); the restore, its journal, a
Kubo node's own files and the lock on a store being written."""
