"""Shared helpers for the test suite (on ``sys.path`` through pytest's ``pythonpath``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

__all__ = ["avro_strategy"]

_TIMESTAMPS = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "string": st.text(max_size=12),
    "bytes": st.binary(max_size=12),
    "double": st.floats(allow_nan=False),
}
_LOGICAL: dict[str, st.SearchStrategy[Any]] = {
    "timestamp-millis": _TIMESTAMPS,
    "date": st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1)),
    "uuid": st.uuids(),
}


def avro_strategy(avro_type: Any) -> st.SearchStrategy[Any]:
    """Values of an expanded Avro type (as in ``EventSchema.field_types``)."""
    if isinstance(avro_type, list):
        return st.one_of(*[avro_strategy(branch) for branch in avro_type])
    if isinstance(avro_type, str):
        return _PRIMITIVES[avro_type]
    if avro_type.get("logicalType") in _LOGICAL:
        return _LOGICAL[avro_type["logicalType"]]
    kind = avro_type["type"]
    if kind == "record":
        return st.fixed_dictionaries(
            {f["name"]: avro_strategy(f["type"]) for f in avro_type["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(avro_type["symbols"])
    if kind == "array":
        return st.lists(avro_strategy(avro_type["items"]), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), avro_strategy(avro_type["values"]), max_size=3)
    return avro_strategy(kind)
