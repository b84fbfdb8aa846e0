"""TEST-ONLY fault injection: crash the agent process at a named point.

When the environment variable ``RELAIS_AGENT_TEST_CRASH_AT`` names a point, the agent
kills itself with ``SIGKILL`` on reaching it: no cleanup, no flush, exactly like a power
cut or the OOM killer. The crash tests use it to show that nothing is lost or duplicated:

* ``after_open`` — a pulled batch was verified and decrypted, nothing stored yet;
* ``after_store`` — the batch is in the inbox, its ``DELIVERED`` receipts are not published
  and the messages are not acknowledged.

Never set it in production. It is read once, when this module is imported.
"""

from __future__ import annotations

import os
import signal
from typing import Final

__all__ = ["CRASH_POINTS", "ENV_VAR", "crash_point"]

ENV_VAR: Final = "RELAIS_AGENT_TEST_CRASH_AT"
CRASH_POINTS: Final = frozenset({"after_open", "after_store"})
_ARMED: Final = os.environ.get(ENV_VAR, "")


def crash_point(name: str) -> None:
    """SIGKILL this process if the test-only fault hook names ``name``."""
    if _ARMED and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
