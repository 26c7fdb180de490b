"""Every hyperparameter a sweep can fix or search, declared once.

One row per field: its type, Hugging Face's default, the range a value must lie in, the spec section
that fixes it, where the value goes and a line of doc. The spec's schema (`train.<name>`,
`model.<name>`), the checks on `search.space`, a trial's `TrainingArguments` and LoRA config, the
export and the table in docs/spec.md all read it, so adding a row is the whole of adding a
hyperparameter (tests/test_hyperparams.py adds one and follows it through).

Imports nothing from tuner: the spec, the space and the trial all read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

Section = Literal["train", "model"]
# Where a value goes: a `TrainingArguments` keyword, a `peft.LoraConfig` keyword, or the model's own set-up
# (tuner.model reads those by name: which blocks to freeze, whether to wrap LoRA at all).
Target = Literal["training_args", "lora", "model"]
T = TypeVar("T")


@dataclass(frozen=True)
class Hyperparam:
    name: str  # the key in `train`/`model` and in `search.space`
    kind: type  # int, float, bool or str
    default: Any  # Hugging Face's (peft's for LoRA): what a trial gets where the spec leaves it out
    doc: str  # one line, for docs/spec.md
    low: float = -math.inf  # a value's range: inclusive bounds unless *_open
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()  # a str field's values
    section: Section = "train"  # the spec section that fixes it
    goes_to: Target = "training_args"
    arg: str = ""  # its keyword where it goes, when that is not `name`
    what: str = ""  # what a value is, in error messages ("a learning rate"); default from `kind`
    hint: str = ""  # said after the range in error messages
    short: str = ""  # its column in the live view; default `name`

    @property
    def keyword(self) -> str:
        return self.arg or self.name

    def annotation(self) -> Any:
        """The type of its field in the spec's dataclass: unset (None) means not fixed there."""
        return (Literal[self.choices] if self.choices else self.kind) | None

    def describe(self) -> str:
        """The values it takes, in words: 'a number in [0, 1)', 'one of linear, cosine'."""
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        what = self.what or ("an integer" if self.kind is int else "a number")
        text = f"{what} {_range(self)}"
        return f"{text} ({self.hint})" if self.hint else text

    def accepts(self, value: Any) -> bool:
        """Whether `value` (a number already, for a numeric field) lies in the field's range."""
        if self.kind is bool:
            return isinstance(value, bool)
        if self.choices:
            return value in self.choices
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        return not (too_low or too_high)


def _range(p: Hyperparam) -> str:
    low, high = math.isfinite(p.low), math.isfinite(p.high)
    if low and high:
        return f"in {'(' if p.low_open else '['}{p.low:g}, {p.high:g}{')' if p.high_open else ']'}"
    if low:
        return f"{'>' if p.low_open else '>='} {p.low:g}"
    if high:
        return f"{'<' if p.high_open else '<='} {p.high:g}"
    return ""


SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
              "reduce_lr_on_plateau")

TABLE: tuple[Hyperparam, ...] = (
    Hyperparam("learning_rate", float, 5e-5, "the optimizer's peak learning rate", low=0, high=1, low_open=True,
               what="a learning rate", short="lr"),
    Hyperparam("per_device_train_batch_size", int, 8, "blocks per device per forward pass", low=1, short="batch"),
    Hyperparam("num_train_epochs", float, 3, "passes over the train split (ASHA's max_t follows the largest)",
               low=0, low_open=True, what="a number of epochs", short="epochs"),
    Hyperparam("warmup_ratio", float, 0.0, "the fraction of the total steps the rate warms up over; "
               "transformers 5's fractional `warmup_steps`", low=0, high=1, high_open=True, arg="warmup_steps",
               what="a fraction of the total steps", short="warmup"),
    Hyperparam("gradient_accumulation_steps", int, 1, "forward passes per optimizer step", low=1, short="accum"),
    Hyperparam("weight_decay", float, 0.0, "AdamW's decoupled weight decay", low=0, short="wd"),
    Hyperparam("lr_scheduler_type", str, "linear", "the learning-rate schedule; `reduce_lr_on_plateau` drops the "
               "rate when a report's eval_loss does not improve, and has no warmup", choices=SCHEDULERS,
               short="sched"),
    Hyperparam("max_grad_norm", float, 1.0, "gradient clipping's norm", low=0, low_open=True, short="clip"),
    Hyperparam("adam_beta1", float, 0.9, "AdamW's beta1", low=0, high=1, high_open=True),
    Hyperparam("adam_beta2", float, 0.999, "AdamW's beta2", low=0, high=1, high_open=True),
    Hyperparam("adam_epsilon", float, 1e-8, "AdamW's epsilon", low=0, low_open=True),
    Hyperparam("label_smoothing_factor", float, 0.0, "label smoothing of the training loss", low=0, high=1,
               high_open=True),
    Hyperparam("neftune_noise_alpha", float, None, "NEFTune: uniform noise of this scale on the input "
               "embeddings while training (unset: off)", low=0, low_open=True, short="neftune"),
    Hyperparam("freeze_layers", int, 0, "freeze the embeddings and the first N blocks", low=0, section="model",
               goes_to="model"),
    Hyperparam("use_lora", bool, False, "train LoRA adapters (peft) instead of the weights", section="model",
               goes_to="model"),
    Hyperparam("lora_r", int, 8, "the adapters' rank", low=1, section="model", goes_to="lora", arg="r",
               hint="the adapters' rank", short="r"),
    Hyperparam("lora_alpha", float, 16.0, "the adapters' scale is lora_alpha / lora_r", low=0, low_open=True,
               section="model", goes_to="lora", hint="the adapters' scale is alpha / r", short="alpha"),
    Hyperparam("lora_dropout", float, 0.05, "dropout on the adapters' input", low=0, high=1, high_open=True,
               section="model", goes_to="lora"),
)


_BY_NAME = {p.name: p for p in TABLE}


def by_name() -> dict[str, Hyperparam]:
    """The table by name."""
    return _BY_NAME


def names() -> tuple[str, ...]:
    """Every hyperparameter, in the table's order: each can be fixed or searched."""
    return tuple(p.name for p in TABLE)


def get(name: str) -> Hyperparam | None:
    return by_name().get(name)


def in_section(section: Section) -> tuple[Hyperparam, ...]:
    return tuple(p for p in TABLE if p.section == section)


def short_name(name: str) -> str:
    """Its column in the live view (a wide terminal fits a trial per line)."""
    p = get(name)
    return p.short if p is not None and p.short else name


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in TABLE}


def typed(name: str, value: Any) -> Any:
    """A validated value as its field's Python type (YAML's `1e-4` is a string; `4.0` an int field's 4)."""
    p = get(name)
    if p is None or value is None or p.kind in (bool, str):
        return value
    number = float(value)
    return int(number) if p.kind is int else number


def keywords(hyper: dict[str, Any], goes_to: Target) -> dict[str, Any]:
    """The keyword arguments for one destination (TrainingArguments, LoraConfig) from a trial's
    complete hyperparameters."""
    return {p.keyword: typed(p.name, hyper[p.name]) for p in TABLE if p.goes_to == goes_to}


def add_fields(section: Section) -> Callable[[type[T]], type[T]]:
    """A class decorator, put under `@dataclass`: adds each hyperparameter of `section` to the spec's
    dataclass as a field (type `kind | None`, default None: not fixed there), after the class's own
    required fields, so `train.<name>` exists exactly where the table says."""

    def wrap(cls: type[T]) -> type[T]:
        own = dict(cls.__dict__.get("__annotations__", {}))
        required = {name: hint for name, hint in own.items() if name not in cls.__dict__}
        rest = {name: hint for name, hint in own.items() if name in cls.__dict__}
        added = {p.name: p.annotation() for p in in_section(section)}
        cls.__annotations__ = {**required, **added, **rest}
        for name in added:
            setattr(cls, name, None)
        return cls

    return wrap


def markdown() -> str:
    """docs/spec.md's hyperparameter table (tests/test_docs.py checks the page holds it as this writes it;
    `python -m tuner.hyperparams` prints it)."""
    rows = ["| hyperparameter | fixed in | default | values | goes to | meaning |",
            "| --- | --- | --- | --- | --- | --- |"]
    place = {"training_args": "`TrainingArguments.{}`", "lora": "`LoraConfig.{}`", "model": "the model's set-up"}
    for p in TABLE:
        default = "true" if p.default is True else "false" if p.default is False else f"{p.default!r}".strip("'")
        rows.append(f"| `{p.name}` | `{p.section}.{p.name}` | {default} | {p.describe()} | "
                    f"{place[p.goes_to].format(p.keyword)} | {p.doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
