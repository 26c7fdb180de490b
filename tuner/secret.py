"""Secrets (W&B keys, HF tokens): named by environment variable, never written anywhere.

A spec may name a secret only through the fields in `ENV_FIELDS`, whose values are environment
variable names. Any other spec value that looks like a key or token, or equals the value of a
secret-looking environment variable, is refused, so it cannot reach `spec.yaml`, the exported config,
W&B's config or Ray's trial files. `redact` scrubs known secret values from text we log.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import Any, Iterator, Mapping

# Spec fields whose value is the *name* of an environment variable holding a secret.
ENV_FIELDS = ("model.token_env", "tracking.wandb.api_key_env")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECRET_ENV_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# Shapes of current credentials, found anywhere in a value or a line of text: W&B's keys
# (`wandb_v1_…`, 86 characters), Hugging Face user, fine-grained and organisation tokens, GitHub's
# classic and fine-grained tokens, OpenAI-style keys, AWS access key ids, Slack tokens. A token is
# not part of a longer word: `task-…` is no `sk-` key.
TOKENS = re.compile(r"(?<![A-Za-z0-9_-])(?:"
                    r"wandb_v\d+_[A-Za-z0-9_-]{20,}"
                    r"|hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z0-9]{30,}"
                    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"
                    r"|sk-(?:proj-)?[A-Za-z0-9_-]{40,}"
                    r"|(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"
                    r"|xox[abprs]-[A-Za-z0-9-]{10,})")
# W&B's older keys: 40 hex characters, optionally after a host prefix. A commit hash has that shape
# too, so only a whole value is taken for one (and never in COMMIT_FIELDS).
OLD_WANDB_KEY = re.compile(r"^(?:[a-z0-9]+-)?[0-9a-f]{40}$")
HIDDEN = "[secret hidden]"
# Fields that hold 40-hex commit hashes, which have a W&B key's shape but are not secrets.
COMMIT_FIELDS = ("model.revision", "model.code_revision", "origin.git_commit")
MIN_SECRET_LENGTH = 8  # shorter environment values (e.g. "1") are not treated as secrets


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names say they hold a secret."""
    environ = os.environ if environ is None else environ
    return sorted({value for name, value in environ.items()
                   if SECRET_ENV_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def looks_like_secret(value: str, known: list[str], shapes: bool = True) -> bool:
    text = value.strip()
    return (shapes and bool(TOKENS.search(text) or OLD_WANDB_KEY.match(text))) or any(s in text for s in known)


def masked(value: str) -> str:
    """Enough of a value for the user to recognise it, not enough to use it."""
    return f"{value[:3]}…({len(value)} characters, hidden)"


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def check_spec(raw: dict[str, Any], problems: list[str], environ: dict[str, str] | None = None) -> None:
    """Report every spec value that holds a secret, and every secret field that is not a variable name."""
    known = secret_values(environ)
    for path, value in _strings(raw, ""):
        if path in ENV_FIELDS:
            leaked = looks_like_secret(value, known)
            if leaked or not ENV_NAME.fullmatch(value):
                shown = masked(value) if leaked else repr(value)
                problems.append(f"{path}: got {shown}; name the environment variable that holds the "
                                "secret (e.g. WANDB_API_KEY), never the secret itself")
        elif looks_like_secret(value, known, shapes=path not in COMMIT_FIELDS):
            problems.append(f"{path}: got {masked(value)}, which looks like a key or token; secrets never "
                            f"go in a spec: put it in an environment variable and name it in "
                            f"{' or '.join(ENV_FIELDS)}")


def redact(text: str, known: list[str] | None = None) -> str:
    """`text` with every known secret value, and anything shaped like a current token, replaced."""
    for secret in secret_values() if known is None else known:
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return TOKENS.sub(HIDDEN, text)


def from_env(name: str | None) -> str | None:
    """The secret in environment variable `name`, read at the moment it is needed and never stored."""
    return os.environ.get(name) or None if name else None


class RedactingStream(io.TextIOBase):
    """A text stream that writes through to `stream` with secret values replaced."""

    def __init__(self, stream):
        self.stream, self.known = stream, secret_values()

    def write(self, text: str) -> int:
        self.stream.write(redact(text, self.known))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class RedactingFilter(logging.Filter):
    """Scrubs secret values from log records before a handler writes them. The environment is read
    once, here, not for every record."""

    def __init__(self):
        super().__init__()
        self.known = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.known)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
