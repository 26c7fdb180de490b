"""The spec's schema: one dataclass per YAML section, each field named for its key, with its default.

Every knob of a sweep is declared here, once (a hyperparameter's field comes from `hyperparams`), so a
reader finds any key by its section. `Spec.fingerprint` hashes what decides a sweep's results, so a
resumed sweep can tell whether its spec changed; the constants below keep that hash stable for sweeps
made before a key existed. Imports nothing that validates: `schema_build` builds these classes from
YAML, `rules`, `spacecheck` and `metriccheck` check them, and `spec` ties those together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuner import hyperparams
from tuner.constants import EVAL_LOSS


@dataclass
@hyperparams.add_fields("model")  # freeze_layers, use_lora and LoRA's r, alpha, dropout: see tuner/hyperparams.py
class ModelSpec:
    name_or_path: str  # hub name, local path, or builtin:tiny-gpt2 (made locally, no network)
    # LoRA (use_lora) wraps these layers; the promoted model is exported merged and as an adapter.
    lora_target_modules: list[str] | None = None  # default: peft's choice for the architecture
    revision: str | None = None  # hub revision (branch, tag or commit)
    token_env: str | None = None  # the environment variable holding a hub token (e.g. HF_TOKEN)
    trust_remote_code: bool = False  # run the model repository's own code; needs a pinned revision
    # The commit of code an `auto_map` takes from another repository (`other/repo--module.Class`).
    code_revision: str | None = None


@dataclass
class CleanSpec:
    """By default a kept record's text is not changed (CRLF line endings become LF)."""

    strip_html: bool = False  # drop HTML elements (an HTML parser: `List<String>` or `x < y` stay)
    normalize_whitespace: bool = False  # collapse runs of spaces inside lines; indentation is kept
    drop_empty: bool = True
    drop_duplicates: bool = True  # exact duplicates, before splitting: no leakage across splits


@dataclass
class SplitSpec:
    train: float = 0.8  # used only where the source has no splits of its own
    validation: float = 0.1
    test: float = 0.1


@dataclass
class DataSpec:
    dataset: str | None = None  # hub dataset name (with `config`, `revision`), or ...
    config: str | None = None
    revision: str | None = None  # a hub dataset's branch, tag or commit: pin it for reproducible data
    path: str | None = None  # ... a local file, glob or directory: txt, jsonl, csv, parquet; or builtin:pydoc-topics
    # Our split names → the source's: a hub dataset's split names, or files/globs inside data.path (a
    # directory). Default: splits named train, validation (valid, val, dev) and test are used as they are.
    splits: dict[str, str] | None = None
    streaming: bool = False  # read records one by one (a large hub dataset): never downloaded whole
    encoding: str = "utf-8"  # of text, JSON and CSV files
    text_column: str = "text"
    # Instruction data: a prompt and a completion column instead of text; the loss is masked on the
    # prompt. With chat_template, each prompt is formatted as a user turn by the tokenizer's template.
    prompt_column: str | None = None
    completion_column: str | None = None
    chat_template: bool = False
    # Chat data: a list of {role, content} per record, formatted by the tokenizer's chat template;
    # the loss is the assistant turns' alone.
    messages_column: str | None = None
    clean: CleanSpec = field(default_factory=CleanSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    seed: int = 0  # seeds the split
    block_size: int = 128  # tokens per packed block; at most the model's maximum positions
    max_records: int | None = None  # keep the first N records (after cleaning): for smoke runs
    num_proc: int | None = None  # processes preparing the data; default: this machine's cores (at most 8)


@dataclass
@hyperparams.add_fields("train")  # learning_rate, batch size, epochs, ...: see tuner/hyperparams.py
class TrainSpec:
    """How trials train. Its hyperparameter fields come from tuner/hyperparams.py's table; one left out
    here and in `search.space` takes Hugging Face's default."""

    # Passed to the scheduler; reduce_lr_on_plateau defaults to {factor: 0.5, patience: 1} (in reports).
    lr_scheduler_kwargs: dict[str, Any] | None = None
    # Stop a trial whose eval_loss has not improved for this many reports (status stopped_patience).
    patience: int | None = None
    # auto: bf16 where the GPU has it, else fp16 with loss scaling; fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the model: slower first steps, faster ones after (GPU)
    dataloader_workers: int | None = None  # default: on a GPU the trial's CPUs less one (1-4); on CPU 0
    per_device_eval_batch_size: int = 32
    seed: int = 42  # model init order, data order and dropout
    report_every_tokens: int = 65536  # training tokens between two reports (eval + checkpoint)
    # Validation blocks evaluated at each report: a fixed sample (seeded by `seed`), the same for every
    # trial, for a fraction of the whole split's time. Default: the whole split.
    eval_blocks: int | None = None
    stop_after_steps: int | None = None  # stop at this step without changing the LR schedule


@dataclass
class MetricSpec:
    """One objective of a multi-objective search: a reported key and its direction."""

    name: str  # a reported key: eval_loss, train_tokens_per_s, trainable_params, peak_memory_mb, ...
    mode: Literal["min", "max"]


@dataclass
class MetricSampleSpec:
    """The validation prompts a generation metric (search.metric: eval_rougeL, ...) or a metric_fn is
    computed on at every report: a fixed sample drawn with train.seed, the same for every trial. It
    runs at every report, so it is small; decoding follows promote.generate (greedy by default)."""

    num_prompts: int = 8  # validation prompts: text passages, or instruction/chat records
    prompt_tokens: int = 16  # plain text: a passage's first k tokens prompt (instruction prompts are whole)
    reference_tokens: int = 16  # the next m tokens (instruction data: the completion's first m) are the reference
    max_new_tokens: int = 16  # what the model may write after each prompt


@dataclass
class SearchSpec:
    # a reported key, a generation metric (eval_bleu, eval_rouge1/2/L, eval_exact_match) or a metric_fn key;
    # with `metrics`: the first one's name (ASHA, patience, the ledger use it)
    metric: str = EVAL_LOSS
    mode: Literal["min", "max"] = "min"  # left out: max for a generation metric, else min
    # Two or more objectives: a multi-objective study (TPE or nsga2) whose finished trials form a Pareto
    # front; the first is `metric` for everything else (ASHA stops trials on it). Default: `metric` alone.
    metrics: list[MetricSpec] | None = None
    # A user's metric, "package.module:function", called at every report with (model, tokenizer, sample);
    # it returns a number (reported as search.metric) or a dict of them (each key prefixed eval_).
    metric_fn: str | None = None
    metric_sample: MetricSampleSpec = field(default_factory=MetricSampleSpec)
    num_samples: int = 8  # trials
    # grid: every combination, in a seeded order, num_samples taken from it; gp: Gaussian process;
    # nsga2: the genetic algorithm NSGA-II
    sampler: Literal["tpe", "random", "cmaes", "qmc", "grid", "gp", "nsga2"] = "tpe"
    seed: int = 0  # seeds the sampler
    # random start-up trials before the sampler models the results (Optuna's: TPE 10, CMA-ES 1, GP 10);
    # for nsga2 the size of each generation (Optuna's: 50; at least 2)
    n_startup_trials: int | None = None
    max_concurrent_trials: int | None = None  # default: as many as the resources allow
    time_budget: float | str | None = None  # wall clock for the search: seconds, or "90s", "30m", "2h"
    baseline: dict[str, Any] | None = None  # a first trial with these values (e.g. HF's defaults)
    enqueue: list[dict[str, Any]] | None = None  # configs that run next, before the sampler's own
    # An earlier sweep (its directory or bucket URI): its ended trials become the study's priors where
    # this space holds their values, and its best warm_start_top_k configs run first (after enqueue).
    warm_start: str | None = None
    # 0 by default: under ASHA, last sweep's best run first set the rungs' bar (bench/RESULTS.md)
    warm_start_top_k: int = 0
    max_failures: int = 2  # retries of a crashed trial, each from its latest checkpoint
    trial_timeout: float | str | None = None  # a trial that runs longer ends as timed_out: "90s", "30m", "2h"
    stall_timeout: float | str | None = "2h"  # a trial silent this long (no report) ends as stalled; null: off
    # On the first Ctrl-C or SIGTERM, how long running trials may take to reach their next checkpoint.
    stop_wait: float | str = "5m"
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedulerSpec:
    type: Literal["asha", "none"] = "asha"
    max_t: int | None = None  # tokens; default: the largest epoch count times the train tokens
    grace_period: int | None = None  # tokens before ASHA may stop a trial; default: max_t / rf^2
    reduction_factor: float = 2.0  # keep the best 1/rf at each rung


@dataclass
class ResourcesSpec:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass
class GenerateSpec:
    """Decoding settings for the final evaluation's continuations, passed to `model.generate`."""

    do_sample: bool = False  # greedy by default, so samples and their scores are reproducible
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50  # used only when sampling
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int = 0  # the sampling seed, the same for every model compared


@dataclass
class PickSpec:
    """Which trial a multi-objective sweep promotes: among the trials whose `metric` is within `within`
    of the best, the best by `then` (each in its mode from search.metrics)."""

    then: str  # a search.metrics name: the cost to minimise (or maximise) among the near-best
    metric: str | None = None  # a search.metrics name; default: the first
    within: float | str = "1%"  # "1%": of the best value; a number: in the metric's own units
    among: Literal["front", "all"] = "front"  # the Pareto front's trials, or every finished trial


@dataclass
class PromoteSpec:
    eval_batch_size: int = 16
    num_prompts: int = 16  # test passages whose continuations are scored (BLEU, ROUGE) and kept in samples.jsonl
    prompt_tokens: int = 16  # k: the first k tokens of a test passage are the prompt
    reference_tokens: int = 32  # m: the next m tokens are the reference continuation
    max_new_tokens: int = 32  # what each model may write
    generate: GenerateSpec = field(default_factory=GenerateSpec)
    evaluate_base: bool = True  # also evaluate the model before fine-tuning, side by side
    top_k: int = 1  # re-evaluate the best k trials on the full validation split before choosing
    keep_best: int = 2  # best checkpoints kept sweep-wide; the others are deleted once they cannot win
    pick: PickSpec | None = None  # with search.metrics: trade the first metric for a cost; default: its best


@dataclass
class WandbSpec:
    project: str = "tuner"
    entity: str | None = None  # a W&B team or user; default: the key's own
    group: str | None = None  # default: the sweep name
    tags: list[str] = field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] | None = None  # default: online with a key, else offline
    api_key_env: str = "WANDB_API_KEY"  # the environment variable holding the key (never the key)
    init_timeout: float = 30.0  # seconds an online start may take before falling back to offline


@dataclass
class TrackingSpec:
    wandb: WandbSpec = field(default_factory=WandbSpec)


@dataclass
class OriginSpec:
    """Where an exported best config came from. Written by `export`, never needed to run."""

    sweep: str | None = None
    trial_id: str | None = None
    metric: str | None = None
    value: float | None = None
    checkpoint: str | None = None
    step: int | None = None
    seed: int | None = None
    git_commit: str | None = None
    versions: dict[str, str] | None = None


@dataclass
class Spec:
    name: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    storage: str | None = None  # a path every node shares, or s3:// / gs://; default runs/<name>
    promote: PromoteSpec = field(default_factory=PromoteSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    origin: OriginSpec | None = None

    @property
    def sweep_dir(self) -> Path:
        """The driver's own directory for the sweep: the storage path, or runs/<name> for a bucket."""
        local = f"runs/{self.name}" if self.storage is None or "://" in self.storage else self.storage
        return Path(local).expanduser().resolve()

    @property
    def location(self) -> str:
        """Where every node finds checkpoints and data: the bucket URI, or the sweep directory."""
        return self.storage if self.storage and "://" in self.storage else str(self.sweep_dir)

    def to_dict(self) -> dict[str, Any]:
        """Every key, nested sections as mappings, in the schema's order (what `spec.yaml` holds)."""
        return dataclasses.asdict(self)

    def decisive(self) -> dict[str, Any]:
        """What decides the sweep's results: the spec without origin and bookkeeping (where it is
        stored, how it is tracked, how many trials)."""
        data = self.to_dict()
        for key in ("origin", "storage", "tracking"):
            data.pop(key)
        data["search"].pop("num_samples")
        for section, key in OPTIONAL_KEYS:  # unset, they leave the hash of a sweep made before them as it was
            if data[section].get(key) is None:
                data[section].pop(key, None)
        _hash_unset_as_before(data)
        _drop_unused_metric_keys(data["search"])
        return data

    def fingerprint(self) -> str:
        """A hash of `decisive()`: a resumed sweep must have the same."""
        return hashlib.sha256(json.dumps(self.decisive(), sort_keys=True, default=str).encode()).hexdigest()[:16]


# Keys added after sweeps were made with tuner: left out of `decisive()` while unset.
OPTIONAL_KEYS = (("search", "metrics"), ("promote", "pick"))


# How each unset hyperparameter entered the hash before the table in tuner/hyperparams.py (these train
# fields held their default in the spec then; the others were null): a sweep started then resumes
# without --force. A hyperparameter added to the table since is left out of the hash while unset.
HASHED_UNSET = {
    **dict.fromkeys(("learning_rate", "per_device_train_batch_size", "num_train_epochs", "warmup_ratio",
                     "gradient_accumulation_steps", "weight_decay", "freeze_layers", "use_lora", "lora_r",
                     "lora_alpha", "lora_dropout")),
    "lr_scheduler_type": "linear", "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "adam_epsilon": 1e-8, "label_smoothing_factor": 0.0,
}


def _hash_unset_as_before(data: dict[str, Any]) -> None:
    """Each unset hyperparameter as `HASHED_UNSET` says it was hashed, or out of the hash if added since."""
    for p in hyperparams.TABLE:
        section = data[p.section]
        if section.get(p.name) is not None:
            continue
        if p.name in HASHED_UNSET:
            section[p.name] = HASHED_UNSET[p.name]
        else:
            section.pop(p.name, None)


def _drop_unused_metric_keys(search: dict[str, Any]) -> None:
    """search.metric_fn and search.metric_sample, unused (no metric_fn, the sample at its defaults),
    leave the hash as it was before they existed: a sweep started then resumes without --force."""
    if search.get("metric_fn") is None and search.get("metric_sample") == dataclasses.asdict(MetricSampleSpec()):
        search.pop("metric_fn", None)
        search.pop("metric_sample", None)
