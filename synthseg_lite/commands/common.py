"""What the entry points share.

* Bad user input becomes one line on stderr and exit code 2. :func:`hydra_main` replaces
  ``@hydra.main``: what Hydra and OmegaConf reject while composing the configuration (unknown keys,
  wrong types, missing config files, override syntax), a ``ValueError`` from the program (bad user
  input, including dataclass ``__post_init__`` checks) and an ``OSError`` on a user's path all
  become one ``error: ...`` line and exit code 2. Anything else is a bug and keeps its traceback.
* ``--version`` and a ``--help`` page generated from the dataclasses that define the options (their
  ``Attributes:`` docstring sections), so each option's description and default are written once,
  next to the field. ``--help`` is Hydra's own help (``hydra/help`` config group):
  :func:`register_help` stores a page as ``hydra/help=<command>`` and each command's YAML selects
  it (``override hydra/help: ...``).
* :func:`until_interrupted`: Ctrl-C and SIGTERM (``kill``, ``scancel``, a SLURM time limit) end a
  long run with one logged line saying what was kept, exit code 128 + the signal's number.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from omegaconf import MISSING

__all__ = [
    "config_groups",
    "describe",
    "fail",
    "field_docs",
    "help_page",
    "hydra_main",
    "option_rows",
    "quote_hint",
    "register_help",
    "require",
    "until_interrupted",
    "user_errors",
    "version",
    "with_version",
    "yaml_key_docs",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: One row of a help page: (dotted key, default as typed on the command line, description).
Row = tuple[str, str, str]

_ENTRY = re.compile(r"^ {4}(\w+)(?: \([^)]*\))?:\s*(.*)$")


def version() -> str:
    """The installed package's version (single source: ``pyproject.toml``)."""
    from synthseg_lite._version import __version__

    return __version__


def with_version(command: str) -> Callable[[F], F]:
    """Decorate a ``@hydra.main`` function: ``--version`` prints ``<command> <version>`` and
    returns before Hydra parses the command line."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def main(*args: Any, **kwargs: Any) -> Any:
            if "--version" in sys.argv[1:]:
                print(f"{command} {version()}")
                return None
            return fn(*args, **kwargs)

        return main  # type: ignore[return-value]

    return wrap


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> description, from the ``Attributes:`` sections of ``cls`` and its bases
    (Google style: ``name: text`` indented 4 spaces, continuation lines indented further)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) if "__doc__" in vars(klass) else None
        if not doc or "Attributes:" not in doc:
            continue
        name = None
        for line in doc.split("Attributes:", 1)[1].splitlines()[1:]:
            if line.strip() and not line.startswith(" "):
                break  # next section
            m = _ENTRY.match(line)
            if m:
                name = m.group(1)
                docs[name] = m.group(2).strip()
            elif name and line.startswith(" " * 5) and line.strip():
                docs[name] += " " + line.strip()
    return docs


def _one_line(text: str, width: int = 110) -> str:
    """``text`` without reST markup, cut after its first sentence when longer than ``width``."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
    if len(text) <= width:
        return text
    depth = 0
    for i, c in enumerate(text):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "." and depth == 0 and text[i + 1 : i + 2] in (" ", "") and i > 20:
            if not text[: i + 1].endswith(("e.g.", "i.e.")):
                return text[: i + 1]
    return text


def _format(value: Any) -> str:
    """A default as it is typed on the command line (Hydra's override grammar)."""
    if value is dataclasses.MISSING or (isinstance(value, str) and value == MISSING):
        return "???"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_format(v)}" for k, v in value.items()) + "}"
    return str(value)


def option_rows(
    cls: type, prefix: str = "", skip: Iterable[str] = (), instance: object | None = None
) -> list[Row]:
    """Every option of dataclass ``cls`` (nested dataclasses flattened to dotted keys).

    Args:
        cls: a dataclass.
        prefix: prepended to each key (e.g. ``"synth."``).
        skip: dotted keys (with the prefix) to leave out, e.g. fields set by a config group.
        instance: an instance of ``cls`` whose values are the defaults (a nested field whose
            default is an instance with other values than its class's, e.g. ``synth.white_rim``).
    """
    skip = set(skip)
    docs = field_docs(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    for name in names:  # undocumented: the class summary, or the field whose text explains it
        if not docs.get(name):
            ref = next((k for k, v in docs.items() if re.search(rf"\b{name}\b", v)), None)
            docs[name] = summary if len(names) == 1 else f"see {prefix}{ref}" if ref else ""
    rows: list[Row] = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in skip:
            continue
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if dataclasses.is_dataclass(default):
            rows += option_rows(type(default), key + ".", skip, default)
            continue
        rows.append((key, _format(default), _one_line(docs.get(f.name, ""))))
    return rows


def yaml_key_docs(path: str | Path) -> list[Row]:
    """Top-level scalar keys of a YAML config with the ``#`` comment lines right above them."""
    rows: list[Row] = []
    comment: list[str] = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            comment.append(line.lstrip("# ").strip())
            continue
        m = re.match(r"^(\w+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if m and m.group(2) and m.group(1) not in ("defaults", "hydra"):
            text = m.group(3) or " ".join(comment)
            rows.append((m.group(1), m.group(2), _one_line(text)))
        comment = []
    return rows


def config_groups(
    conf_dir: str | Path,
    exclude: Iterable[str] = ("cli", "hydra"),
    roots: Iterable[str] = ("scaling",),
) -> dict[str, list[str]]:
    """Config group -> its YAML choices under ``conf_dir`` (e.g. ``experiment: [cpu, smoke]``).
    Folders in ``roots`` are other search-path roots (``scaling/hydra/launcher`` is the group
    ``hydra/launcher``)."""
    conf_dir = Path(conf_dir)
    found: dict[str, list[str]] = {}
    for f in sorted(conf_dir.rglob("*.yaml")):
        group = f.parent.relative_to(conf_dir).as_posix()
        if group != "." and group.split("/")[0] not in set(exclude):
            for root in roots:
                group = group.removeprefix(f"{root}/")
            found.setdefault(group, []).append(f.stem)
    return found


def help_page(
    command: str, summary: str, rows: Sequence[Row], groups: dict[str, list[str]] | None = None
) -> str:
    """The text of ``<command> --help`` (a Hydra help template).

    Args:
        command: installed command name, e.g. ``synthseg-lite-infer``.
        summary: one line saying what the command does.
        rows: the options (see :func:`option_rows`).
        groups: config group -> its choices, listed above the options (see :func:`config_groups`).
    """
    script = command.removeprefix("synthseg-lite-") + ".py"
    summary = " ".join(summary.strip().split("\n\n")[0].split())  # first paragraph
    width = min(max(len(k) + len(v) + 1 for k, v, _ in rows), 44)
    rows = [tuple(s.replace("$", "$$") for s in row) for row in rows]  # Hydra's string.Template
    lines = [
        f"{command}: {summary.replace('$', '$$')}",
        "",
        f"Usage: {command} [KEY=VALUE ...]   (from a checkout: python {script} [KEY=VALUE ...])",
        "",
    ]
    if groups:
        lines += ["Config groups (GROUP=CHOICE; choices of each group):"]
        lines += [f"  {g}: {', '.join(c)}" for g, c in groups.items()] + [""]
    lines.append("Options (KEY=DEFAULT  description; ??? = required):")
    for key, default, text in rows:
        lines.append(f"  {key + '=' + default:<{width}}  {text}".rstrip())
    lines += [
        "",
        "Print the resolved configuration with --cfg job; the version with --version; Hydra's own"
        " flags (multirun -m, sweeps) with --hydra-help.",
    ]
    return "\n".join(lines).replace("${", "\\${")  # OmegaConf must not read it as interpolation


def register_help(
    command: str, summary: str, rows: Sequence[Row], groups: dict[str, list[str]] | None = None
) -> None:
    """Store :func:`help_page` as ``hydra/help=<command with _ for ->`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        group="hydra/help",
        name=command.replace("-", "_"),
        node={
            "app_name": command,
            "header": "",
            "footer": "",
            "template": help_page(command, summary, rows, groups),
        },
    )


# ---------------------------------------------------------------- one-line errors, exit code 2

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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C raises :class:`KeyboardInterrupt`."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def until_interrupted(fn: Callable[[], T], kept: str) -> T:
    """Run ``fn``; Ctrl-C (SIGINT) or SIGTERM ends the program with one line, not a traceback
    (Ctrl-C) or nothing at all (SIGTERM's default).

    SIGTERM is caught only where nothing else handles it (submitit, which launches SLURM jobs
    from Hydra, has its own handler). The line goes to the log (so a batch job's log file says
    why it stopped), and the exit code is 128 + the signal's number (130, 143), as a shell
    reports a process killed by it. Files being written are not left half-written
    (:func:`synthseg_lite.io.atomic_write` removes its temporary on any exception).

    Args:
        fn: the long work.
        kept: what the user has and can do next, e.g. "the scans finished so far are kept".
    """
    # signal handlers are the main thread's; a framework's own (submitit's) is left in place
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if ours else None
    try:
        return fn()
    except KeyboardInterrupt as exc:
        sig = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        logging.getLogger("synthseg_lite").error("interrupted (%s): %s", sig.name, kept)
        sys.exit(128 + int(sig))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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

    cause = exc.__cause__
    if not isinstance(exc, OSError) and isinstance(cause, OSError) and cause.strerror:
        # logging's "Unable to configure handler 'file'" hides the log file and the reason
        return describe(cause)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        if isinstance(exc, FileExistsError | NotADirectoryError) and exc.filename:
            # mkdir of an output folder that is a file (or under one)
            return f"{where}{exc.strerror}: a file where a folder is needed"
        return f"{where}{exc.strerror}"
    if isinstance(exc, MissingConfigException):
        head = _first_line(exc)
        for plugin, extra in _EXTRAS.items():  # a preset whose Hydra plugin is not installed
            if plugin in head:
                return f"{head}: pip install 'synthseg_lite[{extra}]'"
        options = re.findall(r"^\t(\S+)$", str(exc), re.MULTILINE)
        return f"{head} (available: {', '.join(options)})" if options else head
    from hydra.errors import HydraException, InstantiationException, OverrideParseException

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
    if isinstance(exc, InstantiationException) and cause is not None and msg.endswith(":"):
        # "Error in call to target 'X':" says nothing on its own: add the setting and the cause
        key = re.search(r"^full_key: (\S+)$", str(exc), re.MULTILINE)
        why = _first_line(cause) or type(cause).__name__
        msg = f"{key.group(1) + ': ' if key else ''}{msg} {type(cause).__name__}: {why}"
    elif isinstance(exc, HydraException) and isinstance(cause, OmegaConfBaseException):
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
