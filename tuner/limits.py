"""The bounds a spec's names, paths, seeds and counts must keep, whatever the rest of it says.

These values leave the spec: a sweep's name becomes a directory, a W&B group and a Ray experiment
name; its storage is a directory the sweep writes into and later prunes; a seed goes to NumPy,
torch and Optuna, which take 32-bit unsigned seeds; a count or a size (`at_least`) has a floor below
which nothing runs. A value outside the bounds is refused with the rule, before anything is made. No
Ray, no torch here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

NAME_MAX = 64
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")
NAME_RULE = (f"use 1 to {NAME_MAX} characters: ASCII letters, digits, '-', '_' and '.', starting with a letter "
             "or digit, no '..' (it names the sweep directory, the W&B group and the Ray experiment)")
SEED_MAX = 2**32 - 1
# Directories of the system a sweep must never be written into (and pruned in) as a whole.
SYSTEM_DIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run",
               "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/mnt", "/media"}


def check_name(name: Any, problems: list[str]) -> None:
    if isinstance(name, str) and name and (not NAME.fullmatch(name) or ".." in name):
        shown = name if len(name) <= 80 else f"{name[:40]}…({len(name)} characters)"
        problems.append(f"name: got {shown!r}; {NAME_RULE}")


def check_seed(value: Any, path: str, problems: list[str]) -> None:
    """An integer seed (a fraction or a boolean is refused by its type) within 0…2³²−1."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= SEED_MAX:
        problems.append(f"{path}: got {value}, expected an integer from 0 to {SEED_MAX} (NumPy, torch and Optuna "
                        "take 32-bit seeds); pick one in that range")


def check_storage(storage: Any, problems: list[str]) -> None:
    """A local storage path is the sweep's own directory: not a file, not a system directory."""
    if not isinstance(storage, str) or not storage or "://" in storage and not storage.startswith("file://"):
        return
    path = Path(storage.removeprefix("file://")).expanduser()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the sweep could not write there either
        problems.append(f"storage: got {storage!r}, a path that cannot be resolved; give a directory for the sweep")
        return
    fix = "give a directory of its own for the sweep, e.g. runs/<name> or /data/sweeps/<name>"
    if str(resolved) in SYSTEM_DIRS or resolved == Path.home() or resolved.parent == resolved:
        problems.append(f"storage: got {storage!r}, a system or home directory the sweep would write into and prune; "
                        f"{fix}")
    elif resolved.exists() and not resolved.is_dir():
        problems.append(f"storage: got {storage!r}, an existing file; {fix}")
    elif any(parent.exists() and not parent.is_dir() for parent in resolved.parents):
        problems.append(f"storage: got {storage!r}, below an existing file; {fix}")
    elif os.path.isdir(resolved) and not os.access(resolved, os.W_OK):
        problems.append(f"storage: got {storage!r}, a directory this user cannot write to; {fix}")


def at_least(value: Any, low: int, path: str, problems: list[str]) -> None:
    """A count or size of at least `low` (a value of the wrong type is refused by its type)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
        problems.append(f"{path}: got {value!r}, expected >= {low}")


def is_commit(value: Any) -> bool:
    """A full 40-character git commit hash: a revision that cannot move (remote code runs from one)."""
    return isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)
