"""Logging of relais processes (agents, gateway, demo): structlog, JSON lines off a terminal.

One canonical line per event handled (the agent's ``agent.submitted``, ``agent.published``,
``agent.delivered``, ``agent.refused``, ``agent.notice``, ``agent.webhook``,
``agent.action``; the gateway's ``router.*`` and ``tracker.*``) with the event id, type,
priority, outcome and reason code. Never content, keys, tokens or personal data: the values
logged are ids and codes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging"]


def configure_logging(
    *, json_output: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """structlog to ``stream`` (default: stderr as of each line): JSON unless a terminal."""
    out = stream or sys.stderr
    as_json = not out.isatty() if json_output is None else json_output
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )

    def factory(*_args: Any) -> structlog.PrintLogger:
        """A logger on the stream as of now (tests and CLIs redirect stderr)."""
        return structlog.PrintLogger(stream or sys.stderr)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
