"""The default runner's adaptation of BackupManager."""

from __future__ import annotations

import pytest

from dsbackup.errors import SchedulerError
from dsbackup.scheduler.runner import ManagerRunner, parent_fingerprint


def test_parent_fingerprint_forms():
    assert parent_fingerprint(None) is None and parent_fingerprint("") is None
    assert parent_fingerprint("ab12") == "ab12"
    assert parent_fingerprint({"fingerprint": "cd34", "path": "x"}) == "cd34"


def test_invalid_backup_settings_are_a_scheduler_error():
    with pytest.raises(SchedulerError, match="invalid backup settings"):
        ManagerRunner()._manager({"no_such_setting": 1})
