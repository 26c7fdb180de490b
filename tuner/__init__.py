"""tuner: hyperparameter search for fine-tuning causal language models on Ray Tune, Optuna and ASHA.

Public names are imported on first use, so `tuner validate` does not pay for torch and
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Spec", "SpecError", "SweepFailed", "SweepResult", "UserError", "load_spec", "resume_sweep", "run_sweep"]
_HOMES = {"Spec": "tuner.spec", "SpecError": "tuner.spec", "load_spec": "tuner.spec",
          "SweepFailed": "tuner.promotion", "SweepResult": "tuner.promotion", "run_sweep": "tuner.pipeline",
          "resume_sweep": "tuner.pipeline", "UserError": "tuner.errors"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
