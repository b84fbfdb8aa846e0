"""The agent's database on its own thread, awaited from the event loop.

SQLite calls (and their fsyncs) never block the loop; one thread keeps them serialised, so
:class:`~relais.agents.store.AgentStore` needs no locking of its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from relais.agents.store import AgentStore
from relais.schemas.errors import ConfigError, Reason, RelaisError

__all__ = ["Database"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Database:
    """An :class:`AgentStore` on its own thread, awaited from the event loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relais-agent-db")
        self._store: AgentStore | None = None

    async def open(self, path: Path) -> None:
        """Open the database on the store thread."""
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, AgentStore, path)

    @property
    def store(self) -> AgentStore:
        """The store (only to be used through :meth:`run`)."""
        if self._store is None:
            raise ConfigError("the agent database is not open")
        return self._store

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on the store thread.

        SQLite failures (disk full, I/O error, corruption) raise
        ``RelaisError(STORE_FAILED)``: whatever was being written is not durable.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except sqlite3.Error as exc:
            raise RelaisError(
                f"agent database: {type(exc).__name__}", reason=Reason.STORE_FAILED
            ) from exc

    async def close(self) -> None:
        """Close the database and stop the thread."""
        if self._store is not None:
            store, self._store = self._store, None
            await self.run(store.close)
        self._executor.shutdown(wait=True)
