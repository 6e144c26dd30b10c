"""What every ``python -m resend_jax.<command>`` shares: its error is the last line of its output.

``run(main)`` is ``absl.app.run(main)`` where

- a failure of the user's making (a bad path, value or key, a damaged checkpoint, a busy
  workdir, a NaN stop: ``USER_ERRORS``) ends the output with ``<Type>: <message>`` and exit
  status 1; ``--verbosity=1`` logs its traceback as well. Other exceptions (bugs) keep
  their traceback;
- a command line that the flags or the config reject (a ``--config.key=value`` typo keeps
  ml_collections' "Did you mean ...") ends with one line, without the flag parser's traceback;
- INFO logs of other libraries (orbax dumps its options at every save and restore) are dropped
  unless ``--verbosity`` is given; their warnings and errors stay.
"""

import contextlib
import functools
import logging as python_logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from absl import app, flags, logging

USER_ERRORS = (ValueError, OSError, KeyError, FloatingPointError)
PACKAGE_DIR = str(Path(__file__).parent)


def run(main: Callable[[list[str]], Any]) -> None:
    """``app.run(main)`` with the error handling and log filtering above."""
    app.run(functools.partial(_main, main), flags_parser=_parse_flags)


def message(error: BaseException) -> str:
    """The text of ``error``; ml_collections' KeyError (also wrapped in the AttributeError of
    attribute access) on one line as ``no key 'k'. Did you mean ...``."""
    while len(error.args) == 1 and isinstance(error.args[0], BaseException):
        error = error.args[0]
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        key, *hint = error.args[0].splitlines()
        return " ".join([f"no key {key}.", *hint])
    return str(error)


@contextlib.contextmanager
def errors_as_last_line() -> Iterator[None]:
    """Exits with status 1 and ``<Type>: <message>`` as the last line on ``USER_ERRORS``."""
    try:
        yield
    except USER_ERRORS as error:
        logging.debug("traceback of the error below", exc_info=True)
        sys.exit(f"{type(error).__name__}: {message(error)}")


def _main(main: Callable[[list[str]], Any], argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.get_absl_handler().addFilter(_own_info_only)
    with errors_as_last_line():
        main(argv)


def _own_info_only(record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or record.pathname.startswith(PACKAGE_DIR)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the rejected flag as the last line of the output."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"error in the command line (--helpshort lists the flags): {_without_traceback(str(error))}")
    except (KeyError, AttributeError, ValueError, TypeError) as error:  # raised by the config file
        sys.exit(f"error in --config: {message(error)}")


def _without_traceback(text: str) -> str:
    """ml_collections puts the traceback of a config file that fails into the flag's error: kept
    are the text before it and its last line, the exception."""
    head, _, traceback = text.partition("Traceback (most recent call last):")
    return " ".join([head.strip(), *traceback.strip().splitlines()[-1:]])
