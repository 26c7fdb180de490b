"""The plan: what a sweep will spend, in tokens and trial-reports, and ASHA's rungs. No Ray here:
`tuner validate` prints it without starting anything."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner import space
from tuner.spec import Spec


@dataclass
class Plan:
    num_samples: int
    concurrency: str
    report_every_tokens: int
    max_t: int | None  # tokens; None until the train split is known
    grace_period: int | None
    reduction_factor: float
    rungs: list[int]
    budget_tokens: int | None  # upper bound: every trial trained to max_t
    budget_reports: int | None

    def describe(self) -> str:
        lines = [f"trials: {self.num_samples}", f"concurrent trials: {self.concurrency}",
                 f"report every: {self.report_every_tokens} tokens"]
        if self.max_t is None:
            lines.append("max_t: the largest epoch count times the train tokens (known once the data is "
                         "prepared; run `sweep` to prepare it)")
        else:
            lines.append(f"max_t: {self.max_t} tokens per trial")
            if self.rungs:
                lines.append(f"ASHA rungs (tokens): {', '.join(map(str, self.rungs))}; "
                             f"keeps the best 1/{self.reduction_factor:g} at each")
            lines.append(f"compute budget (at most): {self.budget_tokens} training tokens, "
                         f"{self.budget_reports} trial-reports")
        return "\n".join(lines)


def asha_rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """ASHA's milestones as Ray computes them for one bracket: grace * rf^k below max_t."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor ** k) for k in range(count)
            if grace_period * reduction_factor ** k < max_t]


def make_plan(spec: Spec, train_tokens: int | None, concurrency: int | None = None) -> Plan:
    """The sweep's budget; `concurrency` is what the live cluster allows, where it is known."""
    sched = spec.scheduler
    max_t = sched.max_t
    if max_t is None and train_tokens is not None:
        max_t = int(math.ceil(space.max_epochs(spec) * train_tokens))
    grace, rungs = None, []
    if sched.type == "asha" and max_t is not None:
        grace = sched.grace_period or max(spec.train.report_every_tokens,
                                          int(max_t / sched.reduction_factor ** 3))
        grace = min(grace, max_t)
        rungs = asha_rungs(grace, max_t, sched.reduction_factor)
    slots = str(concurrency or spec.search.max_concurrent_trials or "as many as the resources allow "
                f"({spec.resources.cpus_per_trial:g} CPU, {spec.resources.gpus_per_trial:g} GPU per trial)")
    budget_tokens = budget_reports = None
    if max_t is not None:
        budget_tokens = spec.search.num_samples * max_t
        budget_reports = spec.search.num_samples * math.ceil(max_t / spec.train.report_every_tokens)
    return Plan(spec.search.num_samples, slots, spec.train.report_every_tokens, max_t, grace,
                sched.reduction_factor, rungs, budget_tokens, budget_reports)


def data_warnings(spec: Spec, plan: Plan, train_tokens: int, estimated: bool = False) -> list[str]:
    """Where the train split is too small for the plan: ASHA would judge trials after more than an
    epoch, or a trial would report fewer than twice an epoch (ASHA and the curves need reports)."""
    about = "about " if estimated else ""
    warnings = []
    every = spec.train.report_every_tokens
    grace = spec.scheduler.grace_period or plan.grace_period
    if spec.scheduler.type == "asha" and grace and train_tokens < grace:
        warnings.append(f"scheduler.grace_period: the train split holds {about}{train_tokens} tokens, fewer than "
                        f"the grace period ({grace}): ASHA first compares trials after more than an epoch; "
                        f"set scheduler.grace_period to about {max(1, train_tokens // 4)} (a quarter epoch)")
    if train_tokens < 2 * every:
        warnings.append(f"train.report_every_tokens: the train split holds {about}{train_tokens} tokens, fewer "
                        f"than two report intervals ({every} each): a trial reports about "
                        f"{train_tokens / every:.2g} time(s) an epoch; set train.report_every_tokens to "
                        f"about {max(1, train_tokens // 8)} for 8 reports an epoch")
    return warnings
