"""The one exception type for input the service refuses, and the text check every input gets."""

from __future__ import annotations

from typing import Optional


class BadInput(Exception):
    """Input that hpcdock refuses; ``field`` names where the problem is, ``message`` why.

    The API turns it into a 4xx ``{"error": {"field", "message"}}`` and the CLI into a
    non-zero exit; nothing is created when it is raised.
    """

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


class NotFound(BadInput):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message, status=404)


def text_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be passed on to a path, the store or a container (NUL, lone
    surrogates), or None when it can."""
    if "\0" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    return None
