"""Logging of relais processes (agents, gateway, demo, CLI): structlog, JSON lines off a terminal.

One canonical line per event handled (the agent's ``agent.submitted``, ``agent.published``,
``agent.delivered``, ``agent.refused``, ``agent.notice``, ``agent.webhook``,
``agent.action``; the gateway's ``router.*`` and ``tracker.*``) with the event id, type,
priority, outcome and reason code. Never content, keys, tokens or personal data: the values
logged are ids and codes.

Levels: a process started on its own (``python -m relais.gateway``, an embedding program)
logs from ``info``. The ``relais`` command is quiet by default: warnings and errors only,
``-v`` for info, ``-vv`` for debug (:func:`set_verbosity`, called once per command line, so
that every later :func:`configure_logging` of that command follows it).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "level_for_verbosity", "set_verbosity"]

_chosen_level: int | None = None  # by the command line (set_verbosity), else info


def level_for_verbosity(verbosity: int) -> int:
    """The level of ``-v`` given ``verbosity`` times: warning, info (1), debug (2 and more)."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def set_verbosity(verbosity: int | None) -> None:
    """The level every later :func:`configure_logging` uses by default (``None``: info).

    Also configures logging at once, so that a command that never calls
    :func:`configure_logging` itself (the operator views) is filtered the same way.
    """
    global _chosen_level  # the process's logging is global by nature
    _chosen_level = None if verbosity is None else level_for_verbosity(verbosity)
    configure_logging()


def configure_logging(
    *, json_output: bool | None = None, level: int | None = None, stream: TextIO | None = None
) -> None:
    """structlog to ``stream`` (default: stderr as of each line): JSON unless a terminal.

    ``level``: the lowest level logged; default the command line's (:func:`set_verbosity`),
    else info.
    """
    out = stream or sys.stderr
    as_json = not out.isatty() if json_output is None else json_output
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    if level is None:
        level = logging.INFO if _chosen_level is None else _chosen_level

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
