"""The router's replay store: which event ids were accepted, beyond the broker's dedup window.

The broker deduplicates ``Nats-Msg-Id`` for two hours only, and a sender chooses that id.
The router therefore records every event it accepts in the ``SEEN`` stream, one subject per
event id (``ref.seen.<event id>``), holding the ingress sequence that carried it. The write
is conditional (``Nats-Expected-Last-Subject-Sequence: 0``: only if the subject is empty),
which makes the check and the record one atomic step for every router sharing the stream:

* the subject was empty: this ingress message is the first with that event id;
* it holds the *same* ingress sequence: a redelivery of the same message (a router crashed
  after recording it), not a replay;
* it holds another sequence: a replay (``REPLAY``), unless the router recognises the
  sender's re-sealing of that event under a newer configuration edition (the holder's note,
  :meth:`SeenStore.claim_noted`, names its edition, sender and recipients), which it
  claims in turn as ``<event id>-e<edition>``.

``SEEN`` forgets an id after its ``max_age``; the router refuses events older than its
maximum age (``STALE``) and from further in the future than its skew (``FROM_FUTURE``), so
:meth:`SeenStore.check_window` refuses to start when ``max_age`` does not cover both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from relais.broker_config.connection import Connection
from relais.gateway.jetstream import ERR_WRONG_LAST_SEQUENCE, last_for_subject, publish
from relais.schemas.errors import ConfigError, TransportError
from relais.schemas.names import SEEN_STREAM, seen_subject

__all__ = ["SEEN_STREAM", "Claim", "SeenStore"]

_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a key of the replay store: ``held`` when it is the claiming message."""

    held: bool
    seq: int | None  # the ingress sequence holding it
    note: str = ""  # what the holder recorded with it (the router: edition, sender, recipients)


class SeenStore:
    """Atomic "first time this event id is accepted?" over the ``SEEN`` stream."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def check_window(self, needed_seconds: float) -> None:
        """Refuse (``ConfigError``) a ``SEEN`` stream that forgets ids too early."""
        info = await self._conn.api(f"$JS.API.STREAM.INFO.{SEEN_STREAM}")
        config = info.get("config") or {}
        max_age_s = int(config.get("max_age", 0)) / 1e9
        if max_age_s and max_age_s < needed_seconds:
            raise ConfigError(
                f"the replay store keeps ids {max_age_s:.0f} s, less than the"
                f" {needed_seconds:.0f} s the router accepts events for"
            )
        if int(config.get("max_msgs_per_subject", -1)) != 1:
            raise ConfigError("the replay store must keep one message per event id")

    async def claim(self, event_id: uuid.UUID, ingress_seq: int) -> bool:
        """Record ``event_id`` as carried by ``ingress_seq``; ``False`` when it is a replay."""
        return (await self.claim_noted(str(event_id), ingress_seq)).held

    async def claim_noted(self, key: str, ingress_seq: int, note: str = "") -> Claim:
        """:meth:`claim` for any one-token key (an event id, or ``<event id>-e<edition>``),
        recording ``note`` with it; the answer says who holds the key and what it noted."""
        subject = seen_subject(key)
        mine = f"{ingress_seq} {note}".rstrip().encode()
        for _ in range(_ATTEMPTS):
            result = await publish(
                self._conn,
                subject,
                mine,
                expect_last_subject_seq=0,
                expected_errors=frozenset({ERR_WRONG_LAST_SEQUENCE}),
            )
            if result.stored:
                return Claim(True, ingress_seq, note)
            held = await last_for_subject(self._conn, SEEN_STREAM, subject)
            if held is not None:
                # The same ingress sequence is a redelivery of the same message, not a replay.
                seq, _, noted = held.data.decode("utf-8", "replace").partition(" ")
                holder = int(seq) if seq.isdigit() else None
                return Claim(holder == ingress_seq, holder, noted)
            # The entry expired between the two calls: try again.
        raise TransportError(f"replay store: no stable answer for {key}")
