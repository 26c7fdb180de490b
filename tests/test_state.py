"""The sweep directory's own state: which experiment to run next, and which spec may resume it."""

from __future__ import annotations

import pytest

from tests.conftest import TINY
from tuner import state
from tuner.errors import UserError
from tuner.spec import load_spec


def spec_at(tmp_path, *overrides):
    return load_spec(TINY, [f"storage={tmp_path}", *overrides])


def started(tmp_path, *overrides):
    """A sweep directory whose first experiment ran (and died)."""
    spec = spec_at(tmp_path, *overrides)
    progress = state.begin(spec, None, force=False)
    state.next_experiment(progress, spec.search.num_samples, 0)
    progress.save(tmp_path)
    return spec


def test_the_first_experiment_then_a_restore_then_an_extension(tmp_path):
    progress = state.SweepState("h")
    first = state.next_experiment(progress, 8, 0)
    assert (first.name, first.num_samples, first.restore) == ("tune", 8, False)
    again = state.next_experiment(progress, 8, 3)  # its driver died: restored, not replaced
    assert again is first and again.restore
    first.finished = True
    assert state.next_experiment(progress, 8, 8) is None
    more = state.next_experiment(progress, 12, 8)
    assert (more.name, more.num_samples) == ("tune-2", 4)


def test_the_same_spec_resumes_whatever_num_samples(tmp_path):
    spec = started(tmp_path)
    resumed = state.begin(spec_at(tmp_path, "search.num_samples=20"), spec, force=False)
    assert [e.name for e in resumed.experiments] == ["tune"]


def test_a_changed_spec_is_refused_naming_the_keys_unless_forced(tmp_path):
    spec = started(tmp_path)
    changed = spec_at(tmp_path, "train.seed=7", "search.space.weight_decay.high=0.2")
    with pytest.raises(UserError, match=r"changed: search\.space\.weight_decay\.high, train\.seed\); .*--force"):
        state.begin(changed, spec, force=False)
    forced = state.begin(changed, spec, force=True)
    assert forced.spec_hash == changed.fingerprint() and forced.experiments


def test_a_directory_where_nothing_ran_starts_anew(tmp_path):
    """Bad input refused before any trial leaves a state with no experiment: the fixed spec runs."""
    spec = spec_at(tmp_path)
    state.begin(spec, None, force=False).save(tmp_path)
    fresh = state.begin(spec_at(tmp_path, "train.seed=7"), spec, force=False)
    assert fresh.experiments == []


def test_the_state_survives_a_round_trip(tmp_path):
    spec = started(tmp_path)
    loaded = state.load(tmp_path)
    assert loaded.spec_hash == spec.fingerprint() and loaded.experiments[0].name == "tune"
    assert state.is_sweep_dir(tmp_path) and not state.is_sweep_dir(tmp_path / "nowhere")
