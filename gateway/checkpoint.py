"""The audit checkpointer: signs the chain of the audit log every N records or T seconds.

Exactly one checkpointer should run (the service runs it in the tracker role). Two would not
corrupt anything: a checkpoint is published with ``Nats-Expected-Last-Subject-Sequence`` set
to the sequence of the last checkpoint this checkpointer knows, so the slower of two loses,
re-reads the log from the winner's checkpoint and carries on from there.

State is the log itself: on start (and after losing a race) the checkpointer takes the last
checkpoint in the stream and reads the records after it. It reads the stream by sequence
(direct gets), not through a consumer, because the chain follows stream order and a
consumer's redeliveries do not.

The log alone cannot show that its tail was cut (nats-server drops the records of a damaged
block it cannot read, and everything after them): a checkpointer that then sealed the
shortened log would launder it. So after each checkpoint the checkpointer writes an
*anchor* (the checkpoint's stream sequence, ``last_seq`` and chain) to a file outside the
broker's store, and on every start it requires that checkpoint to be in the log, unchanged.
If it is not, it refuses to sign anything (``AUDIT_ANCHOR_MISSING``, logged at every
tick) until an operator has looked at the log (``relais audit verify --anchor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from relais.agents.keys import write_atomic
from relais.broker_config.connection import Connection
from relais.gateway.audit import (
    AUDIT_STREAM,
    CHECKPOINT_SUBJECT,
    GENESIS,
    RECORD_SUBJECT,
    Anchor,
    Checkpoint,
    chain_next,
    open_checkpoint,
    sign_checkpoint,
)
from relais.gateway.jetstream import (
    ERR_WRONG_LAST_SEQUENCE,
    get_message,
    last_for_subject,
    publish,
    read_stream,
)
from relais.gateway.metrics import AUDIT_CHECKPOINTS
from relais.schemas.envelope import LocalIdentity
from relais.schemas.errors import EnvelopeError, Reason, RelaisError

__all__ = ["Checkpointer"]

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Checkpointer:
    """Publishes :class:`~relais.gateway.audit.Checkpoint` messages on ``ref.audit.ckpt``."""

    def __init__(
        self,
        conn: Connection,
        signer: LocalIdentity,
        *,
        partnership: str,
        every_records: int = 1000,
        every_seconds: float = 10.0,
        anchor_file: Path | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._conn = conn
        self._anchor_file = anchor_file
        self._signer = signer
        self._partnership = partnership
        self._every_records = every_records
        self._every_ms = int(every_seconds * 1000)
        self._clock = clock
        self._synced = False
        self._ckpt_seq = 0  # stream sequence of the last checkpoint message (0: none)
        self._sealed = GENESIS  # chain value the last checkpoint sealed
        self._chain = GENESIS  # chain value after the last record read
        self._next_seq = 1
        self._first = 0  # first record not sealed yet (0: none)
        self._last = 0
        self._count = 0
        self._last_at = 0

    async def _check_anchor(self) -> None:
        """The checkpoint of the anchor file must still be in the log, unchanged."""
        if self._anchor_file is None or not self._anchor_file.exists():
            return
        try:
            anchor = json.loads(self._anchor_file.read_bytes())
            seq, last_seq, chain = int(anchor["seq"]), int(anchor["last_seq"]), anchor["chain"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RelaisError(
                "unreadable audit anchor", reason=Reason.AUDIT_ANCHOR_MISSING
            ) from exc
        stored = await get_message(self._conn, AUDIT_STREAM, seq)
        found = None
        if stored is not None and stored.subject == CHECKPOINT_SUBJECT:
            with contextlib.suppress(EnvelopeError):
                found = open_checkpoint(stored.data, keys=None)
        if found is None and await self._expired(seq):
            return  # dropped by age (retention), not cut: the log now begins after it
        if found is None or (found.last_seq, found.chain) != (last_seq, chain):
            raise RelaisError(
                f"the audit log lost checkpoint {seq}", reason=Reason.AUDIT_ANCHOR_MISSING
            )

    async def _expired(self, seq: int) -> bool:
        """True when message ``seq`` is before the log's first one and the log expires by age."""
        info = await self._conn.api(f"$JS.API.STREAM.INFO.{AUDIT_STREAM}")
        state, config = info.get("state") or {}, info.get("config") or {}
        return bool(config.get("max_age")) and seq < int(state.get("first_seq", 0))

    def _write_anchor(self, seq: int, checkpoint: Checkpoint) -> None:
        if self._anchor_file is None:
            return
        body = {
            "seq": seq,
            "last_seq": checkpoint.last_seq,
            "chain": checkpoint.chain,
            # what `relais audit verify --anchor` takes, in the form it prints
            "anchor": str(Anchor(checkpoint.last_seq, checkpoint.chain)),
        }
        self._anchor_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self._anchor_file, json.dumps(body).encode(), overwrite=True)

    async def resync(self) -> None:
        """Restart from the last checkpoint in the log (which must hold the anchored one)."""
        await self._check_anchor()
        stored = await last_for_subject(self._conn, AUDIT_STREAM, CHECKPOINT_SUBJECT)
        self._first = self._last = self._count = 0
        if stored is None:
            self._ckpt_seq, self._sealed, self._next_seq = 0, GENESIS, 1
            self._last_at = self._clock()
        else:
            try:
                cp = open_checkpoint(stored.data, keys=None)
            except EnvelopeError:
                # Verification will report it; chaining on from it keeps the log linear.
                _log.error("audit.checkpoint_unreadable", seq=stored.seq)
                raise
            self._ckpt_seq, self._sealed = stored.seq, bytes.fromhex(cp.chain)
            self._next_seq, self._last_at = cp.last_seq + 1, cp.at
        self._chain = self._sealed
        self._synced = True

    async def _read_new(self) -> bool:
        """Chain the records stored since the last read; False if another writer checkpointed."""
        messages = read_stream(self._conn, AUDIT_STREAM, start=self._next_seq)
        async with contextlib.aclosing(messages):
            async for msg in messages:
                self._next_seq = msg.seq + 1
                if msg.subject == RECORD_SUBJECT:
                    self._chain = chain_next(self._chain, msg.seq, msg.data)
                    self._first = self._first or msg.seq
                    self._last, self._count = msg.seq, self._count + 1
                elif msg.subject == CHECKPOINT_SUBJECT and msg.seq > self._ckpt_seq:
                    return False
        return True

    async def step(self, *, force: bool = False) -> Checkpoint | None:
        """Read new records; sign and publish a checkpoint if one is due (or ``force``)."""
        if not self._synced:
            await self.resync()
        if not await self._read_new():
            await self.resync()
            return None
        now = self._clock()
        due = self._count >= self._every_records or now - self._last_at >= self._every_ms
        if not self._count or not (due or force):
            return None
        checkpoint = Checkpoint(
            partnership=self._partnership,
            signer=self._signer.partner_id,
            key_id=self._signer.key_id,
            first_seq=self._first,
            last_seq=self._last,
            count=self._count,
            chain=self._chain.hex(),
            previous=self._sealed.hex(),
            at=now,
        )
        return await self._publish(checkpoint)

    async def _publish(self, checkpoint: Checkpoint) -> Checkpoint | None:
        """Sign and publish, unless another checkpointer got there first."""
        result = await publish(
            self._conn,
            CHECKPOINT_SUBJECT,
            sign_checkpoint(checkpoint, self._signer),
            expect_last_subject_seq=self._ckpt_seq,
            expected_errors=frozenset({ERR_WRONG_LAST_SEQUENCE}),
        )
        if not result.stored:
            _log.warning("audit.checkpoint_race", last_seq=checkpoint.last_seq)
            await self.resync()
            return None
        self._ckpt_seq, self._last_at = result.seq, checkpoint.at
        self._sealed = bytes.fromhex(checkpoint.chain)
        self._first = self._last = self._count = 0
        self._write_anchor(result.seq, checkpoint)
        AUDIT_CHECKPOINTS.inc()
        _log.info(
            "audit.checkpoint",
            first_seq=checkpoint.first_seq,
            last_seq=checkpoint.last_seq,
            count=checkpoint.count,
            seq=result.seq,
        )
        return checkpoint

    async def run(self, stop: asyncio.Event, *, tick: float = 1.0) -> None:
        """Checkpoint until ``stop`` is set; a last checkpoint seals what is left on the way out."""
        while not stop.is_set():
            try:
                await self.step()
            except RelaisError as exc:
                if exc.reason is Reason.AUDIT_ANCHOR_MISSING:
                    _log.error("audit.anchor_missing", detail=str(exc))
                else:
                    _log.warning("audit.checkpoint_failed", reason=exc.reason.value)
                self._synced = False
            try:
                async with asyncio.timeout(tick):
                    await stop.wait()
            except TimeoutError:
                pass
        if self._synced:
            try:
                await self.step(force=True)
            except RelaisError as exc:
                _log.warning("audit.checkpoint_failed", reason=exc.reason.value)
