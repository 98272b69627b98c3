"""What the project's CLIs share: a library's log records shown as plain lines on stderr, and
the option hint added to a library error's message.

Library code only logs (`logging.getLogger(__name__)`); a CLI decides what the user sees. The
handler writes through click.echo at each record, so it follows whatever stderr is at the
time (click's CliRunner swaps it), which logging.basicConfig's stream, fixed at setup, does not.
Library messages name no flags: each CLI maps the exception types it can help with to the
text that names its option (with_hint).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import click


class EchoHandler(logging.Handler):
    """Log records as stderr lines, "warning: " before warnings and errors."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


@contextmanager
def log_on_stderr(*names: str, level: int = logging.INFO) -> Iterator[None]:
    """Show the named loggers' records at `level` and above on stderr for the length of a
    command, and only there (not also through a root handler someone configured)."""
    handler = EchoHandler()
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (old_level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate


def with_hint(exc: BaseException, hints: Mapping[type[BaseException], str]) -> str:
    """`exc`'s message, followed by the hint of the first type in `hints` it is an instance of
    (each hint carries its own separator, e.g. "; raise --timeout ...")."""
    hint = next((text for kind, text in hints.items() if isinstance(exc, kind)), "")
    return f"{exc}{hint}"
