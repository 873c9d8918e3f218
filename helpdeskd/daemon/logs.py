"""structlog set-up: JSON lines on stdout for journald, key-value events, no secrets."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(*, json: bool = True, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure structlog once per process.

    The exception renderer is the plain one: structlog's rich/better-exceptions renderers show
    local variables, which would put passwords and message bodies into the journal.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
