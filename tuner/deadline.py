"""The driver's clock on each running trial: `search.trial_timeout` and `search.stall_timeout`.

A trial can hang where no code of ours runs (a dead NCCL peer, a stuck data loader, a deadlock in
a user's loop) and hold its GPU forever. Only the driver can notice: it times each trial's runs
(summed over retries and resumes) and the time since its last report, and names the trials past
either limit. No Ray here; the ledger ends the trials it names.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuner import constants as C


@dataclass
class Clock:
    ran_before: float  # seconds the trial ran in its earlier runs
    started: float  # when this run started (monotonic seconds)
    last_report: float  # when it last reported in this run, or its start


class Deadlines:
    def __init__(self, trial_timeout: float | None, stall_timeout: float | None):
        self.trial_timeout, self.stall_timeout = trial_timeout, stall_timeout
        self.clocks: dict[str, Clock] = {}

    def start(self, trial_id: str, ran_before: float, now: float) -> None:
        self.clocks[trial_id] = Clock(ran_before, now, now)

    def reported(self, trial_id: str, now: float) -> None:
        if trial_id in self.clocks:
            self.clocks[trial_id].last_report = now

    def ran(self, trial_id: str, now: float) -> float | None:
        """Seconds the trial has run in all, or None when it is not running."""
        clock = self.clocks.get(trial_id)
        return None if clock is None else clock.ran_before + now - clock.started

    def stop(self, trial_id: str, now: float) -> float | None:
        """The trial stopped running (ended, or crashed before a retry): its total so far."""
        total = self.ran(trial_id, now)
        self.clocks.pop(trial_id, None)
        return total

    def overdue(self, now: float) -> list[tuple[str, str, str]]:
        """(trial id, status, why) for each running trial past a limit."""
        found = []
        for trial_id, clock in self.clocks.items():
            ran = clock.ran_before + now - clock.started
            silent = now - clock.last_report
            if self.trial_timeout is not None and ran > self.trial_timeout:
                found.append((trial_id, C.TIMED_OUT, f"ran {ran:.0f} s, longer than search.trial_timeout "
                                                    f"({self.trial_timeout:g} s)"))
            elif self.stall_timeout is not None and silent > self.stall_timeout:
                found.append((trial_id, C.STALLED, f"no report for {silent:.0f} s, longer than "
                                                  f"search.stall_timeout ({self.stall_timeout:g} s)"))
        return found
