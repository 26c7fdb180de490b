"""Where log lines go: the terminal gets tuner's own lines, `sweep.log` gets everything.

At the default verbosity no library notice reaches the terminal (Ray's token-authentication line,
deprecation warnings, W&B's banner); `-v` lets them through. Every line, ours and the libraries',
goes to `sweep.log` in the sweep directory at debug level, for bug reports. Secrets are redacted on
every path.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from tuner import layout
from tuner.secret import RedactingFilter

OURS = "tuner"
# Libraries whose debug lines are all chatter (a line per lock taken, per HTTP request): INFO and up.
CHATTY = ("filelock", "urllib3", "fsspec", "botocore", "s3transfer", "asyncio", "git", "PIL", "matplotlib")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries with a terminal handler of their own, and the level sweep.log gets from each (Ray: its own
# INFO, its debug lines are in its session logs).
LIBRARIES = {"ray": None, "transformers": logging.DEBUG, "datasets": logging.DEBUG, "optuna": logging.INFO}


class _OnTerminal(logging.Filter):
    """Our lines always; the libraries' only with -v."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name == OURS or record.name.startswith(OURS + ".")


class _Format(logging.Formatter):
    """`[tuner] message` for ours, `[library] message` for the rest (with -v)."""

    def format(self, record: logging.LogRecord) -> str:
        name = OURS if record.name.startswith(OURS) else record.name.split(".")[0]
        return f"[{name}] {record.getMessage()}" + (f"\n{self.formatException(record.exc_info)}"
                                                   if record.exc_info else "")


def setup(verbose: bool = False) -> None:
    """The command line's logging: one terminal handler on the root logger, warnings captured."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "tuner_terminal", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.tuner_terminal = True  # type: ignore[attr-defined]
    handler.setLevel(logging.INFO)
    handler.setFormatter(_Format())
    handler.addFilter(_OnTerminal(verbose))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger(OURS).setLevel(logging.DEBUG)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn → the py.warnings logger: sweep.log, and -v's terminal
    adopt_libraries()


def adopt_libraries() -> None:
    """Ray, transformers, datasets and Optuna each give their logger a terminal handler of their own
    (and stop it from propagating): their lines go to ours instead, the terminal with -v, sweep.log
    always, at their debug level where the command line set ours up. Called again as each is
    imported. From Python (no `setup`), only Ray's is taken over, as before: a caller's own root
    handlers would otherwise print the libraries' debug lines."""
    full = configured()
    for name, level in LIBRARIES.items():
        if name not in sys.modules or (name != "ray" and not full):
            continue
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            if type(handler) is logging.StreamHandler or type(handler).__name__ == "PlainRayHandler":
                library.removeHandler(handler)
        library.propagate = True
        if full and level is not None:
            library.setLevel(level)


def configured() -> bool:
    """Whether `setup` ran (the command line), or a Python caller has handlers of its own."""
    return any(getattr(h, "tuner_terminal", False) for h in logging.getLogger().handlers)


@contextlib.contextmanager
def to_file(sweep_dir: Path) -> Iterator[Path]:
    """Everything logged while the block runs, appended to the sweep's sweep.log: at debug level
    from the command line (from Python, at the levels the caller set)."""
    path = Path(sweep_dir) / layout.SWEEP_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.addFilter(RedactingFilter())
    root, ours = logging.getLogger(), logging.getLogger(OURS)
    levels = root.level, ours.level
    root.addHandler(handler)
    if configured():
        root.setLevel(logging.DEBUG)
    elif ours.getEffectiveLevel() > logging.INFO:  # a Python caller's levels are theirs, but for
        ours.setLevel(logging.INFO)  # our own progress lines: the ones run_sweep is documented to log
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
        handler.close()
