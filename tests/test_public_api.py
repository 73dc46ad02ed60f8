"""The public names and generated docs stay in sync with the code."""

from __future__ import annotations

from pathlib import Path

import dsbackup
from dsbackup.errors import exit_code_table

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_import():
    for name in dsbackup.__all__:
        assert getattr(dsbackup, name) is not None, name
    assert dsbackup.BackupManager.__module__ == "dsbackup.engine.backup"


def test_exit_code_doc_is_generated_from_the_classes():
    doc = (ROOT / "docs" / "EXIT_CODES.md").read_text()
    assert exit_code_table() in doc, "regenerate docs/EXIT_CODES.md: python -m dsbackup.errors"
