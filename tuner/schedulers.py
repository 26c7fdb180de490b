"""ASHA that lets the baseline trial run to its end.

The final evaluation says whether tuning beat the baseline (`search.baseline`, e.g. Hugging Face's
defaults). A baseline that ASHA stopped after one report would be "beaten" by any fully trained
winner: a comparison of unlike with unlike. So ASHA never stops it early. Its results still enter
ASHA's rungs (the parent records them before deciding), so the trials judged after it are measured
against it too. Imported by the driver only, with `sweep`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuner import records


class BaselineASHA(ASHAScheduler):
    """`ASHAScheduler`, except that the trial whose config is `baseline` is never stopped before
    `max_t` (at `max_t` every trial, the baseline too, has completed)."""

    def __init__(self, baseline: dict[str, Any] | None, *, time_attr: str, max_t: int, **asha: Any):
        super().__init__(time_attr=time_attr, max_t=max_t, **asha)
        # Our own copies: ASHA's are private. Saved and restored with ASHA's state (its __dict__).
        self.baseline, self.time_attr, self.max_t = dict(baseline or {}), time_attr, max_t

    def is_baseline(self, trial: Any) -> bool:
        """Matched by params, as `results.baseline_record` finds its record: a lost baseline that
        runs again as a new trial is still the baseline."""
        return bool(self.baseline) and records.same_params(trial.config, self.baseline)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)  # records it in its rung
        if action == TrialScheduler.STOP and result[self.time_attr] < self.max_t and self.is_baseline(trial):
            return TrialScheduler.CONTINUE  # ASHA's own debug count of stopped trials still includes it
        return action
