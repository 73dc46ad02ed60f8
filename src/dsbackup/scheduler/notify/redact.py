"""Keep secrets (passwords, tokens, ping URLs) out of logs and machine output.

The first line of defence is :class:`~dsbackup.scheduler.secret.Secret` (secrets never print)
and notifier errors built from safe parts (:mod:`.failure`); the Redactor is the second: it
replaces any secret that still appears verbatim in a message."""

from __future__ import annotations

from collections.abc import Iterable

from dsbackup.scheduler.secret import redact_url

__all__ = ["Redactor", "redact_url"]


class Redactor:
    """Replaces every known secret (and each URL's path/query) in a message with ``***``.

    Besides the exact secret, its stripped form and each of its whitespace-separated pieces of
    6 characters or more are replaced, so a secret that a library split or trimmed (a URL with
    a space, a header value with a trailing newline) is still caught.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s:
                continue
            forms.add(s)
            forms.add(s.strip())
            forms.update(p for p in s.split() if len(p) >= 6)
        self._secrets = sorted((s for s in forms if len(s) >= 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, redact_url(s) if "://" in s else "***")
        return text
