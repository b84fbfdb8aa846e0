"""Logging of the agent: structlog, one JSON object per line when not on a terminal.

One canonical line per event handled (``agent.submitted``, ``agent.published``,
``agent.delivered``, ``agent.refused``, ``agent.notice``, ``agent.webhook``,
``agent.action``) with the event id, type, priority, outcome and reason code. Never
content, keys, tokens or personal data: the values logged are ids and codes.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(*, json_lines: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog for the agent process (stderr; JSON unless on a terminal)."""
    as_json = not sys.stderr.isatty() if json_lines is None else json_lines
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
