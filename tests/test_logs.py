"""Where log lines go: ours to the terminal, the libraries' only with -v, all of them to sweep.log."""

from __future__ import annotations

import logging
import warnings

import pytest

from tests.conftest import SENTINEL_HF_TOKEN
from tuner import logs


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_notices_reach_the_terminal_only_with_verbose(clean_root, capsys, verbose):
    logs.setup(verbose)
    logging.getLogger("tuner").info("ours")
    logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
    warnings.warn("old API", FutureWarning, stacklevel=1)  # what deprecations raise
    err = capsys.readouterr().err
    assert "[tuner] ours" in err
    assert ("Token authentication" in err) == verbose
    assert ("old API" in err) == verbose


def test_sweep_log_gets_everything_at_debug_level_and_no_secret(clean_root, capsys, tmp_path):
    logs.setup(False)
    with logs.to_file(tmp_path) as path:
        logging.getLogger("tuner").debug("a detail")
        logging.getLogger("datasets").debug("library detail")
        logging.getLogger("ray").warning("Token authentication is enabled")
        logging.getLogger("tuner").info(f"token {SENTINEL_HF_TOKEN} in a message")
    text = path.read_text()
    assert path.name == "sweep.log"
    for expected in ("DEBUG tuner: a detail", "DEBUG datasets: library detail", "WARNING ray: Token authentication"):
        assert expected in text
    assert SENTINEL_HF_TOKEN not in text and "in a message" in text
    assert "Token authentication" not in capsys.readouterr().err
    logging.getLogger("tuner").info("after the sweep")
    assert "after the sweep" not in path.read_text()  # the file handler is gone with the block
