"""Where log lines go: ours to the terminal, the libraries' only with -v, all of them to sweep.log."""

from __future__ import annotations

import logging
import warnings

import pytest

from tests.conftest import SENTINEL_HF_TOKEN
from tuner import logs


@pytest.fixture
def clean_root():
    """Logging as it was before the test: the root's handlers and level, and the libraries' loggers
    that `setup` takes over."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: (list(lg.handlers), lg.propagate, lg.level)
                 for name, lg in ((n, logging.getLogger(n)) for n in logs.LIBRARIES)}
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, (kept, propagate, was) in libraries.items():
        library = logging.getLogger(name)
        library.handlers[:] = kept
        library.propagate = propagate
        library.setLevel(was)
    logging.captureWarnings(False)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_notices_reach_the_terminal_only_with_verbose(clean_root, capsys, verbose):
    logs.setup(verbose)
    logging.getLogger("tuner").info("ours")
    logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # each run of the test warns afresh
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


def test_a_librarys_own_terminal_handler_is_taken_over(clean_root, capsys, tmp_path):
    """transformers prints through a handler of its own; from the command line its lines come to
    ours: sweep.log at debug level, the terminal only with -v."""
    import transformers

    transformers.utils.logging.get_logger("transformers.x").warning("a library notice")  # its handler is set
    logs.setup(False)
    with logs.to_file(tmp_path) as path:
        transformers.utils.logging.get_logger("transformers.x").debug("a library detail")
        transformers.utils.logging.get_logger("transformers.x").warning("a second notice")
    assert "a second notice" not in capsys.readouterr().err
    text = path.read_text()
    assert "DEBUG transformers.x: a library detail" in text and "WARNING transformers.x: a second notice" in text
