"""What every trial of a sweep shares, kept apart from the training core so that the driver and the
command line (status, validate, report) never import the Trainer: its import alone takes seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tuner.data import Prepared
from tuner.spec import Spec

# What a trial reports through: metrics, and a checkpoint directory (None for a report without one).
# The directory may be deleted once the call returns: a reporter that keeps checkpoints copies it.
Reporter = Callable[[dict[str, Any], "str | None"], None]


@dataclass
class TrialContext:
    """What every trial of one sweep shares; pickled once and shipped to each worker."""

    spec: Spec
    prepared: Prepared
    model_path: str  # what from_pretrained takes for the base model
    max_t: int | None = None  # ASHA's max_t in tokens: a trial reaching it has completed
    trial_fn: Callable | None = None  # the user's own training loop, in place of `run_trial`
    metric_fn: Callable | None = None  # run_sweep(metric_fn=...): the user's metric, in place of search.metric_fn
    workers_have_cuda: bool = False  # data-parallel trials use nccl when true, else gloo
    driver_node: str | None = None  # the Ray node that prepared the data; others copy it locally
    # Trials that had ended when a resumed driver's predecessor died, each with its last report: Tune's
    # older snapshot may still count them as running, and they only repeat that report.
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)
