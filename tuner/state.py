"""A sweep directory's own progress: which spec started it, its Tune experiments, what was promoted.

`sweep.json` is what lets `tuner resume` (or the same `sweep` command run again) pick a sweep up
where a dead driver left it: an experiment that never finished is restored, a finished sweep asked
for more trials gets one more experiment on the same Optuna study, and a sweep that was already
promoted and exported is not promoted again. It also holds the sweep's id, made when the sweep is
created: the Optuna study is kept under it (see `study`). No Ray here: `sweep` runs what this
module decides.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuner import layout
from tuner.errors import UserError
from tuner.spec import Spec

STATE_FILE = layout.STATE_FILE


@dataclass
class Experiment:
    """One Tune experiment of the sweep: its directory name and how many trials it was asked for."""

    name: str
    num_samples: int
    finished: bool = False
    restore: bool = False  # this run restores it from Tune's last snapshot (its driver died)
    abandoned: bool = False  # its snapshot was unreadable and `--restart-search` went on without it


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class SweepState:
    spec_hash: str
    experiments: list[Experiment] = field(default_factory=list)
    exported_trials: int | None = None  # how many trials the exported best/ was chosen among
    sweep_id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    trial_fn: str | None = None  # the user's training loop the trials run (module:name), if not ours

    def save(self, sweep_dir: Path) -> None:
        layout.write_json(Path(sweep_dir) / STATE_FILE, asdict(self))


def load(sweep_dir: Path) -> SweepState | None:
    """The state in `sweep_dir`; an unreadable one is refused by name (never silently replaced)."""
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        loaded = SweepState(raw["spec_hash"], [Experiment(**e) for e in raw["experiments"]],
                            raw.get("exported_trials"), raw.get("sweep_id") or new_id(),
                            raw.get("created_at") or path.stat().st_mtime, raw.get("trial_fn"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable sweep state ({type(exc).__name__}: {exc}); restore it from a copy "
                        "of the sweep directory, or give --name to start a new sweep") from None
    if "sweep_id" not in raw:  # made before sweeps had ids: this one is its id from now on
        loaded.save(sweep_dir)
    return loaded


def is_sweep_dir(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / STATE_FILE).is_file()


def begin(spec: Spec, saved_spec: Spec | None, force: bool, trial_fn: str | None = None) -> SweepState:
    """The state to run `spec` with: a new sweep's, or the one in its directory if the spec is the
    same one (the trial count and the cluster address may change). A changed spec is refused unless
    `force`: trials run under one spec and trials under another are not comparable. So is a change
    of training loop (the built-in one, or the user's `trial_fn`, named module:name)."""
    previous = load(spec.sweep_dir)
    if previous is None:
        return SweepState(spec.fingerprint(), trial_fn=trial_fn)
    if not previous.experiments:  # nothing ran (e.g. refused bad input): start anew, same sweep
        return SweepState(spec.fingerprint(), sweep_id=previous.sweep_id, created_at=previous.created_at,
                          trial_fn=trial_fn)
    if previous.trial_fn != trial_fn and not force:
        ran = f"the Python function {previous.trial_fn}" if previous.trial_fn else "the built-in Trainer loop"
        now = f"the Python function {trial_fn}" if trial_fn else "the built-in Trainer loop"
        function = (previous.trial_fn or "").split(":")[-1]
        how = (f"resume it from Python: tuner.resume_sweep('{spec.sweep_dir}', trial_fn={function})"
               if previous.trial_fn else "resume it without trial_fn")
        raise UserError(f"{spec.sweep_dir}: its trials ran {ran}, not {now}; {how}, or add --force")
    if previous.spec_hash != spec.fingerprint() and not force:
        changed = changed_keys(saved_spec.decisive(), spec.decisive()) if saved_spec else []
        raise UserError(f"{spec.sweep_dir} holds a sweep of a different spec (changed: "
                        f"{', '.join(changed) or 'unknown'}); run it with the spec it was started with, "
                        "add --force to resume it under the new spec, or give --name to start a new sweep")
    previous.spec_hash, previous.trial_fn = spec.fingerprint(), trial_fn
    return previous


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths whose values differ."""
    keys = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{path}.")
        elif a != b:
            keys.append(path)
    return keys


def next_experiment(state: SweepState, target: int, trials_so_far: int) -> Experiment | None:
    """What to run now: the unfinished experiment a dead driver left (restored), else a new one for
    the trials still missing from `target`, else nothing."""
    if state.experiments and not state.experiments[-1].finished:
        last = state.experiments[-1]
        last.restore = True
        return last
    if trials_so_far >= target:
        return None
    name = layout.experiment_names(len(state.experiments) + 1)[-1]
    experiment = Experiment(name, target - trials_so_far)
    state.experiments.append(experiment)
    return experiment
