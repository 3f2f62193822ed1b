"""What the entry points share: bad user input becomes one line on stderr and exit code 2.

:func:`hydra_main` replaces ``@hydra.main``: what Hydra and OmegaConf reject while composing the
configuration (unknown keys, wrong types, missing config files, override syntax), a
``ValueError`` from the program (bad user input, including dataclass ``__post_init__`` checks) and
an ``OSError`` on a user's path all become one ``error: ...`` line and exit code 2. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

__all__ = ["describe", "fail", "hydra_main", "quote_hint", "require", "user_errors"]

T = TypeVar("T")

#: Hydra plugin (as named in its configs) -> the package extra that installs it
_EXTRAS = {"submitit": "cluster", "optuna": "sweep"}


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


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def quote_hint(override: str) -> str:
    """How to pass ``key=value`` whose value holds characters Hydra parses (``=``, ``[ ]``,
    ``,``, quotes, non-ASCII letters): the value in Hydra's single quotes, inside shell quotes."""
    key, sep, value = override.partition("=")
    if not sep:
        return ""
    value = value.replace("\\", "\\\\").replace("'", "\\'")
    return f" (a path with such characters must be quoted: {key}=\"'{value}'\")"


def describe(exc: BaseException) -> str:
    """One line for a user error raised by Hydra, OmegaConf, the program or the OS."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    if isinstance(exc, MissingConfigException):
        head = _first_line(exc)
        for plugin, extra in _EXTRAS.items():  # a preset whose Hydra plugin is not installed
            if plugin in head:
                return f"{head}: pip install 'synthseg_lite[{extra}]'"
        options = re.findall(r"^\t(\S+)$", str(exc), re.MULTILINE)
        return f"{head} (available: {', '.join(options)})" if options else head
    from hydra.errors import HydraException, OverrideParseException

    msg = _first_line(exc).rstrip(".")
    if isinstance(exc, OverrideParseException):
        override = str(getattr(exc, "override", ""))
        return f"cannot parse override {override!r}: {msg}{quote_hint(override)}"
    if msg.startswith("Ambiguous value for argument"):  # a comma: Hydra reads a sweep
        return msg + quote_hint(re.sub(r"^.*argument '(.*)'$", r"\1", msg))
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        if key and key not in msg:
            msg = f"{key}: {msg}"
    cause = exc.__cause__
    if isinstance(exc, HydraException) and isinstance(cause, OmegaConfBaseException):
        extra = describe(cause)
        if extra not in msg:
            msg = f"{msg}: {extra}"
    return msg or type(exc).__name__


def hydra_main(
    config_path: str, config_name: str
) -> Callable[[Callable[[Any], T]], Callable[..., T]]:
    """``@hydra.main(version_base="1.3", config_path=..., config_name=...)`` whose user errors are
    one ``error:`` line on stderr and exit code 2 (Hydra itself prints several lines, exit 1).

    Hydra's own reporting is bypassed by setting ``HYDRA_FULL_ERROR=1`` for the call, so the
    exception reaches this wrapper unchanged; ``HYDRA_FULL_ERROR`` set by the user keeps Hydra's
    full traceback.
    """
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    user = (HydraException, OmegaConfBaseException, ValueError, OSError)

    def decorate(task: Callable[[Any], T]) -> Callable[..., T]:
        @functools.wraps(task)  # Hydra unwraps it to find the config folder
        def job(cfg: Any) -> T:
            try:  # inside the job, before Hydra adds its "Error executing job" line
                return task(cfg)
            except user as exc:
                fail(describe(exc))

        wrapped = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(
            job
        )

        @functools.wraps(task)
        def main(*args: Any, **kwargs: Any) -> T:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                return wrapped(*args, **kwargs)
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return wrapped(*args, **kwargs)
            except user as exc:
                fail(describe(exc))
            finally:
                os.environ.pop("HYDRA_FULL_ERROR", None)

        return main

    return decorate
