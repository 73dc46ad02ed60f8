"""The engine: backup and restore of whole datastores through the archive layer — the managers
behind the public API (dsbackup.BackupManager), incremental backups, the restore journal, a
Kubo node's own files and the lock on a store being written."""
