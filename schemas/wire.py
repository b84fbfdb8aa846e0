"""Strict binary framing used by envelopes and signed statements.

Primitives (see ``docs/protocol.md``):

* ``uvarint``: unsigned LEB128, at most 9 bytes, value < 2**63, *minimal* encoding only
  (a trailing ``0x00`` group is an overlong encoding and is rejected);
* ``bytes``: a ``uvarint`` length then that many bytes; the length is checked against the
  bytes actually remaining *and* against a per-field cap before anything is sliced, so a
  huge length prefix inside a small payload fails at once without allocating;
* ``str``: ``bytes`` holding UTF-8;
* fixed-size fields: raw bytes.

Every reader failure raises :class:`~relais.schemas.errors.EnvelopeError` with a precise
reason code.
"""

from __future__ import annotations

from relais.schemas.errors import EnvelopeError, Reason

__all__ = ["MAX_VARINT_BYTES", "Reader", "Writer", "encode_uvarint"]

MAX_VARINT_BYTES = 9
_MAX_VALUE = (1 << 63) - 1


def encode_uvarint(value: int) -> bytes:
    """Minimal unsigned LEB128 encoding of ``0 <= value < 2**63``."""
    if value < 0 or value > _MAX_VALUE:
        raise EnvelopeError(Reason.FIELD_TOO_LARGE)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Writer:
    """Append-only builder for the framing primitives."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def uvarint(self, value: int) -> Writer:
        """Append a minimal unsigned varint."""
        if 0 <= value < 0x80:
            self._buf.append(value)
        else:
            self._buf += encode_uvarint(value)
        return self

    def raw(self, data: bytes) -> Writer:
        """Append fixed-size bytes as they are."""
        self._buf += data
        return self

    def bytes_(self, data: bytes) -> Writer:
        """Append a length-prefixed byte string."""
        self.uvarint(len(data))
        self._buf += data
        return self

    def str_(self, text: str) -> Writer:
        """Append a length-prefixed UTF-8 string."""
        return self.bytes_(text.encode("utf-8"))

    def str_list(self, items: list[str] | tuple[str, ...]) -> Writer:
        """Append a count then each string."""
        self.uvarint(len(items))
        for item in items:
            self.str_(item)
        return self

    def getvalue(self) -> bytes:
        """The bytes written so far."""
        return bytes(self._buf)


class Reader:
    """Bounds-checked reader over an immutable buffer; never reads past ``end``."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return self._end - self._pos

    @property
    def position(self) -> int:
        """Offset of the next byte to read."""
        return self._pos

    def uvarint(self) -> int:
        """Read a minimal unsigned varint of at most 9 bytes."""
        data, pos, end = self._data, self._pos, self._end
        if pos < end and data[pos] < 0x80:  # one-byte fast path: most lengths and counts
            self._pos = pos + 1
            return data[pos]
        value = 0
        shift = 0
        for i in range(MAX_VARINT_BYTES):
            if pos >= end:
                raise EnvelopeError(Reason.TRUNCATED)
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise EnvelopeError(Reason.VARINT_OVERLONG)
                if value > _MAX_VALUE:
                    raise EnvelopeError(Reason.VARINT_OVERLONG)
                self._pos = pos
                return value
            shift += 7
        raise EnvelopeError(Reason.VARINT_OVERLONG)

    def count(self, cap: int, reason: Reason) -> int:
        """Read a element count and reject it above ``cap`` with ``reason``."""
        value = self.uvarint()
        if value > cap:
            raise EnvelopeError(reason)
        return value

    def raw(self, size: int) -> bytes:
        """Read exactly ``size`` bytes."""
        if size > self._end - self._pos:
            raise EnvelopeError(Reason.TRUNCATED)
        start = self._pos
        self._pos = start + size
        return bytes(self._data[start : self._pos])

    def bytes_(self, cap: int) -> bytes:
        """Read a length-prefixed byte string of at most ``cap`` bytes."""
        size = self.uvarint()
        if size > self._end - self._pos:
            raise EnvelopeError(Reason.LENGTH_EXCEEDS_INPUT)
        if size > cap:
            raise EnvelopeError(Reason.FIELD_TOO_LARGE)
        return self.raw(size)

    def str_(self, cap: int) -> str:
        """Read a length-prefixed UTF-8 string of at most ``cap`` bytes."""
        size = self.uvarint()
        start = self._pos
        if size > self._end - start:
            raise EnvelopeError(Reason.LENGTH_EXCEEDS_INPUT)
        if size > cap:
            raise EnvelopeError(Reason.FIELD_TOO_LARGE)
        self._pos = start + size
        try:
            return str(self._data[start : self._pos], "utf-8")
        except UnicodeDecodeError as exc:
            raise EnvelopeError(Reason.MALFORMED_HEADER) from exc

    def str_list(self, max_items: int, item_cap: int, reason: Reason) -> tuple[str, ...]:
        """Read a count (at most ``max_items``, else ``reason``) then each string."""
        n = self.count(max_items, reason)
        return tuple(self.str_(item_cap) for _ in range(n))

    def expect_end(self) -> None:
        """Fail with ``TRAILING_BYTES`` unless everything was consumed."""
        if self._pos != self._end:
            raise EnvelopeError(Reason.TRAILING_BYTES)
