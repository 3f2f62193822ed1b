"""What the entry points share: bad user input becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

__all__ = ["fail", "require", "user_errors"]

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <first line of message>`` on stderr and exit with ``code``."""
    print(f"error: {str(message).splitlines()[0] if str(message) else 'failed'}", file=sys.stderr)
    sys.exit(code)


def require(missing: Iterable[str]) -> None:
    """Fail when required settings (Hydra's ``???``) were not given on the command line."""
    missing = sorted(missing)
    if missing:
        fail(f"missing required setting(s): {', '.join(m + '=...' for m in missing)}")


def user_errors(fn: Callable[[], T]) -> T:
    """Run ``fn``; a ``ValueError`` (bad user input) ends the program with :func:`fail`."""
    try:
        return fn()
    except ValueError as exc:
        fail(str(exc))
