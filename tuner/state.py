"""A sweep directory's own progress: which spec started it, its Tune experiments, what was promoted.

`sweep.json` is what lets `launch.py resume` (or the same `sweep` command run again) pick a sweep up
where a dead driver left it: an experiment that never finished is restored, a finished sweep asked
for more trials gets one more experiment on the same Optuna study, and a sweep that was already
promoted and exported is not promoted again. No Ray here: `sweep` runs what this module decides.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.spec import Spec

STATE_FILE = "sweep.json"
FIRST_EXPERIMENT = "tune"  # Ray Tune's experiment directory for the first run; then tune-2, tune-3, …


@dataclass
class Experiment:
    """One Tune experiment of the sweep: its directory name and how many trials it was asked for."""

    name: str
    num_samples: int
    finished: bool = False
    restore: bool = False  # this run restores it from Tune's last snapshot (its driver died)


@dataclass
class SweepState:
    spec_hash: str
    experiments: list[Experiment] = field(default_factory=list)
    exported_trials: int | None = None  # how many trials the exported best/ was chosen among

    def save(self, sweep_dir: Path) -> None:
        path = sweep_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)  # a driver killed mid-write leaves the previous state, never half of one


def load(sweep_dir: Path) -> SweepState | None:
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return SweepState(raw["spec_hash"], [Experiment(**e) for e in raw["experiments"]], raw.get("exported_trials"))


def is_sweep_dir(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / STATE_FILE).is_file()


def begin(spec: Spec, saved_spec: Spec | None, force: bool) -> SweepState:
    """The state to run `spec` with: a new sweep's, or the one in its directory if the spec is the
    same one (the trial count and the cluster address may change). A changed spec is refused unless
    `force`: trials run under one spec and trials under another are not comparable."""
    previous = load(spec.sweep_dir)
    if previous is None or not previous.experiments:  # nothing ran (e.g. refused bad input): start anew
        return SweepState(spec.fingerprint())
    if previous.spec_hash != spec.fingerprint() and not force:
        changed = changed_keys(saved_spec.decisive(), spec.decisive()) if saved_spec else []
        raise UserError(f"{spec.sweep_dir} holds a sweep of a different spec (changed: "
                        f"{', '.join(changed) or 'unknown'}); run it with the spec it was started with, "
                        "add --force to resume it under the new spec, or give --name to start a new sweep")
    previous.spec_hash = spec.fingerprint()
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
    n = len(state.experiments) + 1
    experiment = Experiment(FIRST_EXPERIMENT if n == 1 else f"{FIRST_EXPERIMENT}-{n}", target - trials_so_far)
    state.experiments.append(experiment)
    return experiment
