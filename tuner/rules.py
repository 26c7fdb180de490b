"""The rules a spec keeps beyond its types: a section's values against each other and against other
sections (instruction columns, remote code pinned, durations, ASHA's bounds, promotion, W&B names).

Run once every section is built (a malformed one is reported by `schema_build` and skipped here), each
problem appended to the one list `spec.validate` reports, in the order a reader meets the keys; the
checks of `search.space` (`spacecheck`) and of the metrics (`metriccheck`) are called in that order
too. `parse_duration` lives beside the rule that accepts a duration, as `sweep`, `ledger` and `live`
read `search.*_timeout` with it.
"""

from __future__ import annotations

import codecs
import json
from typing import Any, Callable

from tuner import hyperparams, limits, metriccheck, spacecheck
from tuner.schema import (
    DataSpec,
    ModelSpec,
    PromoteSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    Spec,
    TrainSpec,
    WandbSpec,
)
from tuner.schema_build import as_number
from tuner.spacecheck import check_point, is_distribution

# Every seed a spec sets (limits.check_seed bounds them).
SEEDS = ("data.seed", "train.seed", "search.seed", "promote.generate.seed")


def _get(spec: Spec, path: str) -> Any:
    """A value by its dotted path; None where a section on the way is missing (reported already)."""
    node: Any = spec
    for part in path.split("."):
        node = getattr(node, part, None)
    return node


def check_rules(spec: Spec, raw: dict[str, Any], problems: list[str]) -> None:
    """Cross-field rules, for each section that was built (a malformed one is already reported)."""
    limits.check_name(spec.name, problems)
    limits.check_storage(spec.storage, problems)
    for path in SEEDS:
        limits.check_seed(_get(spec, path), path, problems)
    if spec.model is not None:
        _check_model(spec.model, problems)
    if spec.data is not None:
        _check_data(spec.data, problems)
    if spec.train is not None:
        _check_train(spec.train, problems)
    if spec.search is not None:
        if spec.search.space is not None:  # an empty `space:` is reported already
            spacecheck.check_space(spec, raw, problems)
            metriccheck.check_metrics(spec.search, raw, problems)
            _check_search(spec, problems)
            if spec.search.sampler == "grid":
                spacecheck.check_grid(spec.search, raw, problems)
            if spec.train is not None:
                spacecheck.check_plateau_warmup(spec, problems)
    if spec.scheduler is not None:
        _check_scheduler(spec.scheduler, problems)
    if spec.resources is not None:
        _check_resources(spec.resources, problems)
        if spec.train is not None and spec.train.precision == "fp16" and spec.resources.gpus_per_trial == 0:
            problems.append("train.precision: got 'fp16', but resources.gpus_per_trial is 0; fp16 "
                            "training needs a GPU: use fp32 (or bf16) on CPU, or give trials GPUs")
    if spec.promote is not None:
        _check_promote(spec.promote, problems)
        metriccheck.check_promote_against(spec, problems)
        metriccheck.check_pick(spec, problems)
    if spec.tracking is not None and spec.tracking.wandb is not None:
        _check_wandb(spec.tracking.wandb, problems)
    _check_storage_scheme(spec.storage, problems)


def _check_model(model: ModelSpec, problems: list[str]) -> None:
    """Remote code runs on every node: only from a pinned commit someone reviewed."""
    if model.trust_remote_code is True and not limits.is_commit(model.revision):
        problems.append(f"model.revision: got {model.revision!r} with model.trust_remote_code: true; "
                        "remote code runs on every node, so pin the 40-character commit hash you reviewed")
    if model.code_revision is not None:
        code = model.code_revision
        if model.trust_remote_code is not True:
            problems.append(f"model.code_revision: got {code!r} without model.trust_remote_code: true; it pins "
                            "remote code, which runs only when trusted: set both or drop code_revision")
        elif not limits.is_commit(code):
            problems.append(f"model.code_revision: got {code!r}; pin the 40-character commit hash of the code "
                            "you reviewed in the other repository")
    _check_fixed(model, "model", problems)


def _check_storage_scheme(storage: str | None, problems: list[str]) -> None:
    """A bucket URI names a filesystem pyarrow reaches from every node."""
    if isinstance(storage, str) and "://" in storage:
        scheme = storage.split("://", 1)[0]
        if scheme not in ("s3", "gs", "file"):
            problems.append(f"storage: got {storage!r}; use s3://bucket/path, gs://bucket/path, or a "
                            "path on a filesystem every node mounts")


def _check_data(data: DataSpec, problems: list[str]) -> None:
    """The data's source, columns, split ratios and sizes, each against the keys it goes with."""
    if (data.prompt_column is None) != (data.completion_column is None):
        given, missing = (("prompt_column", "completion_column") if data.prompt_column is not None
                          else ("completion_column", "prompt_column"))
        problems.append(f"data.{missing}: missing while data.{given} is {getattr(data, given)!r}; instruction "
                        "data needs both columns (or neither, for plain text in data.text_column)")
    if data.chat_template and data.prompt_column is None:
        problems.append("data.chat_template: got true without data.prompt_column; the template formats "
                        "instruction prompts: set data.prompt_column and data.completion_column")
    if (data.dataset is None) == (data.path is None):
        problems.append(f"data: got dataset={data.dataset!r} and path={data.path!r}; "
                        "set exactly one: `dataset` (a hub dataset) or `path` (local files)")
    if data.config is not None and data.dataset is None:
        problems.append(f"data.config: got {data.config!r} without data.dataset; "
                        "`config` names a configuration of a hub dataset")
    ratios = data.split
    if ratios is not None and all(isinstance(r, float) for r in (ratios.train, ratios.validation, ratios.test)):
        for key in ("train", "validation", "test"):
            value = getattr(ratios, key)
            if not 0 < value < 1:
                problems.append(f"data.split.{key}: got {value!r}, expected a fraction in (0, 1)")
        total = ratios.train + ratios.validation + ratios.test
        if abs(total - 1) > 1e-6:
            problems.append(f"data.split: ratios sum to {total:g}, expected 1 (got train={ratios.train:g}, "
                            f"validation={ratios.validation:g}, test={ratios.test:g}); make them add up to 1, "
                            "e.g. 0.8/0.1/0.1")
    limits.at_least(data.block_size, 2, "data.block_size", problems)
    if data.max_records is not None:
        limits.at_least(data.max_records, 3, "data.max_records", problems)
    if data.num_proc is not None:
        limits.at_least(data.num_proc, 1, "data.num_proc", problems)
    if data.messages_column is not None and data.prompt_column is not None:
        problems.append(f"data.messages_column: got {data.messages_column!r} with data.prompt_column "
                        f"{data.prompt_column!r}; a record is chat messages or a prompt and a completion: "
                        "set one of them")
    if data.splits is not None and sorted(data.splits) != ["test", "train", "validation"]:
        problems.append(f"data.splits: got keys {sorted(data.splits)}, expected train, validation and test, "
                        "each naming the source's split (or a file in data.path)")
    if data.revision is not None and data.dataset is None:
        problems.append(f"data.revision: got {data.revision!r} without data.dataset; it pins a hub dataset")
    try:
        codecs.lookup(data.encoding)
    except (LookupError, TypeError):
        problems.append(f"data.encoding: got {data.encoding!r}, not an encoding Python knows; use e.g. "
                        "utf-8, latin-1 or cp1252")


def _check_fixed(section: TrainSpec | ModelSpec, where: hyperparams.Section, problems: list[str]) -> None:
    """The hyperparameters a section fixes, each against its range in the table."""
    for p in hyperparams.in_section(where):
        value = getattr(section, p.name)
        if value is not None and not p.choices:  # a field with choices is typed Literal: checked when built
            spacecheck.check_value(p.name, value, f"{where}.{p.name}", problems)


def _check_train(train: TrainSpec, problems: list[str]) -> None:
    """The hyperparameters `train` fixes, and its counts."""
    _check_fixed(train, "train", problems)
    limits.at_least(train.per_device_eval_batch_size, 1, "train.per_device_eval_batch_size", problems)
    limits.at_least(train.report_every_tokens, 1, "train.report_every_tokens", problems)
    for name in ("stop_after_steps", "eval_blocks"):
        if getattr(train, name) is not None:
            limits.at_least(getattr(train, name), 1, f"train.{name}", problems)
    if train.dataloader_workers is not None:
        limits.at_least(train.dataloader_workers, 0, "train.dataloader_workers", problems)
    if train.patience is not None:
        limits.at_least(train.patience, 1, "train.patience", problems)


def _check_search(spec: Spec, problems: list[str]) -> None:
    """The search's counts, durations and warm start, and the configs queued before the sampler's own."""
    search = spec.search
    limits.at_least(search.num_samples, 1, "search.num_samples", problems)
    if search.max_concurrent_trials is not None:
        limits.at_least(search.max_concurrent_trials, 1, "search.max_concurrent_trials", problems)
    limits.at_least(search.max_failures, 0, "search.max_failures", problems)
    if search.n_startup_trials is not None:
        limits.at_least(search.n_startup_trials, 0, "search.n_startup_trials", problems)
        if search.sampler == "nsga2" and search.n_startup_trials in (0, 1):
            problems.append(f"search.n_startup_trials: got {search.n_startup_trials} with sampler nsga2, where it "
                            "sizes each generation; expected >= 2, or drop it for Optuna's 50")
    for key in ("time_budget", "trial_timeout", "stall_timeout", "stop_wait"):
        value = getattr(search, key)
        if value is not None and parse_duration(value) is None:
            problems.append(f"search.{key}: got {value!r}, expected seconds > 0 or a duration such as "
                            "'90s', '30m', '2h'")
    searched = [n for n, e in search.space.items() if is_distribution(e)]
    if not searched and isinstance(search.num_samples, int) and search.num_samples > 1:
        problems.append(f"search.num_samples: got {search.num_samples}, but search.space samples "
                        "nothing; set num_samples: 1 or add a distribution to search.space")
    if search.baseline is not None:
        check_point(search.baseline, search, "search.baseline", "a baseline", problems)
    _check_warm_start(search, problems)
    seen: dict[str, str] = {}
    for i, point in enumerate(search.enqueue or []):
        path = f"search.enqueue[{i}]"
        check_point(point, search, path, "an enqueued config", problems)
        key = json.dumps(point, sort_keys=True, default=str)
        if key in seen:
            problems.append(f"{path}: the same config as {seen[key]}; each config runs once: drop one")
        seen.setdefault(key, path)


def _check_warm_start(search: SearchSpec, problems: list[str]) -> None:
    """The earlier sweep itself is read when the sweep starts (`warmstart`): here, the keys."""
    limits.at_least(search.warm_start_top_k, 0, "search.warm_start_top_k", problems)
    if search.warm_start is not None and not str(search.warm_start).strip():
        problems.append("search.warm_start: got an empty path; name an earlier sweep's directory or bucket URI, "
                        "e.g. runs/tiny, or drop the key")
    if search.warm_start and search.sampler == "grid":
        problems.append(f"search.warm_start: got {search.warm_start!r} with sampler grid, which runs every point "
                        "whatever came before; warm starts inform a model: use sampler tpe or gp, or drop warm_start")


def _check_scheduler(scheduler: SchedulerSpec, problems: list[str]) -> None:
    """ASHA's budget, grace period and reduction factor (nothing with `scheduler: none`)."""
    if scheduler.type == "none":
        return
    if scheduler.max_t is not None:
        limits.at_least(scheduler.max_t, 1, "scheduler.max_t", problems)
    if scheduler.grace_period is not None:
        limits.at_least(scheduler.grace_period, 1, "scheduler.grace_period", problems)
    if isinstance(scheduler.reduction_factor, float) and scheduler.reduction_factor < 2:
        problems.append(f"scheduler.reduction_factor: got {scheduler.reduction_factor!r}, expected >= 2 "
                        "(each rung keeps the best 1/reduction_factor of the trials; 2 to 4 is usual)")
    if (isinstance(scheduler.max_t, int) and isinstance(scheduler.grace_period, int)
            and scheduler.grace_period > scheduler.max_t):
        problems.append(f"scheduler.grace_period: got {scheduler.grace_period}, larger than "
                        f"max_t={scheduler.max_t}; it must be <= max_t: lower grace_period or raise max_t")


def _check_resources(resources: ResourcesSpec, problems: list[str]) -> None:
    """A trial's CPUs and GPUs, in amounts Ray can give."""
    if isinstance(resources.cpus_per_trial, float) and resources.cpus_per_trial <= 0:
        problems.append(f"resources.cpus_per_trial: got {resources.cpus_per_trial:g}, expected > 0")
    gpus = resources.gpus_per_trial
    if isinstance(gpus, float) and (gpus < 0 or (gpus > 1 and not gpus.is_integer())):
        problems.append(f"resources.gpus_per_trial: got {gpus:g}, expected 0, a fraction of one GPU "
                        "(e.g. 0.5), or a whole number of GPUs")


def _check_promote(promote: PromoteSpec, problems: list[str]) -> None:
    """The final evaluation's sizes and its decoding settings."""
    for key in ("eval_batch_size", "prompt_tokens", "reference_tokens", "max_new_tokens", "top_k", "keep_best"):
        limits.at_least(getattr(promote, key), 1, f"promote.{key}", problems)
    limits.at_least(promote.num_prompts, 0, "promote.num_prompts", problems)
    generate = promote.generate
    if generate is None:
        return
    for key, low in (("num_beams", 1), ("top_k", 0)):
        limits.at_least(getattr(generate, key), low, f"promote.generate.{key}", problems)
    ranges: tuple[tuple[str, Callable[[float], bool], str], ...] = (
        ("temperature", lambda v: v > 0, "> 0"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("repetition_penalty", lambda v: v > 0, "> 0"))
    for key, ok, expected in ranges:
        value = getattr(generate, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            problems.append(f"promote.generate.{key}: got {value:g}, expected {expected}")


def _check_wandb(wandb: WandbSpec, problems: list[str]) -> None:
    """W&B's start-up timeout, and names W&B accepts."""
    if isinstance(wandb.init_timeout, float) and wandb.init_timeout <= 0:
        problems.append(f"tracking.wandb.init_timeout: got {wandb.init_timeout:g}, expected seconds > 0")
    for key in ("project", "entity", "group"):
        value = getattr(wandb, key)
        if isinstance(value, str) and (len(value) > 128 or any(c in value for c in "/\\#?%:")):
            problems.append(f"tracking.wandb.{key}: got {value!r}; use at most 128 characters and none of "
                            "/ \\ # ? % :")


def parse_duration(value: float | str) -> float | None:
    """Seconds from a number or a string like '90s', '30m', '2h'; None when it is neither."""
    number = as_number(value)
    if number is None and isinstance(value, str) and value[-1:] in ("s", "m", "h"):
        number = as_number(value[:-1])
        if number is not None:
            number *= {"s": 1, "m": 60, "h": 3600}[value[-1]]
    return number if number is not None and number > 0 else None
