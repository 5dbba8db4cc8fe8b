"""Payload indexes of the built-in collection: for each declared field path, the ids of the records
by value, so that a filter over declared fields is answered without reading any payload.

    postings = Postings(("category", "price"))
    postings.add("r1", '{"category": "shoes", "price": 80}')
    ids, exact = postings.candidates(parse({"category": "shoes", "price": {"$lt": 100}}).root)

Per path: `equal` maps a value key to ids, for the field's value and, where it is a list, each of
its elements (what `$eq` and `$in` match); `numbers` and `strings` map the scalar values in order
(what the ranges compare; a list never answers a range); `present` holds the ids where the field is
there and not null (`$exists`). Keys follow runtime/index/filters.py exactly: numbers (booleans as
1 and 0) compare as float64, strings by code point, anything else matches nothing.

`candidates(node)` gives a superset of the ids where the filter is true, or None where the declared
fields cannot narrow it; `exact` says the set is the answer itself (every comparison in the filter
is on a declared field), so no payload needs to be read. Negations (`$not`, `$ne`, `$nin`) give
None: under three-valued logic "not red" excludes records without a colour, which postings of
values do not list.
"""

from __future__ import annotations

import json
from typing import Any

from sortedcontainers import SortedDict

from runtime.index.filters import _ABSENT, RANGE, And, Cmp, Node, Or, field

Key = tuple[str, float | str]  # ("n", number) or ("s", string)


def key(value: Any) -> Key | None:
    if isinstance(value, (int, float)):  # bool is an int: true is 1
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    return None


class _Field:
    def __init__(self) -> None:
        self.equal: dict[Key, set[str]] = {}
        self.numbers: SortedDict = SortedDict()  # float -> ids whose scalar value it is
        self.strings: SortedDict = SortedDict()  # str -> ids
        self.present: set[str] = set()

    def change(self, record_id: str, value: Any, adding: bool) -> None:
        if value is _ABSENT or value is None:
            return
        _edit(self.present, record_id, adding)
        for element in value if isinstance(value, list) else (value,):
            if (k := key(element)) is not None:
                self._post(self.equal, k, record_id, adding)
        if (k := key(value)) is not None:
            self._post(self.numbers if k[0] == "n" else self.strings, k[1], record_id, adding)

    @staticmethod
    def _post(table: Any, k: Any, record_id: str, adding: bool) -> None:
        ids = table.get(k)
        if adding:
            table.setdefault(k, set()).add(record_id)
        elif ids is not None:
            ids.discard(record_id)
            if not ids:
                del table[k]

    def matching(self, cmp: Cmp) -> set[str]:
        """The ids where the comparison is true."""
        if cmp.op == "$exists":
            return self.present
        if cmp.op in RANGE:
            k = key(cmp.value)
            assert k is not None
            table = self.numbers if k[0] == "n" else self.strings
            low = k[1] if cmp.op in ("$gt", "$gte") else None
            high = k[1] if cmp.op in ("$lt", "$lte") else None
            inclusive = (cmp.op == "$gte", cmp.op == "$lte")
            return _union(table[v] for v in table.irange(low, high, inclusive=inclusive))
        values = cmp.values if cmp.op == "$in" else (cmp.value,)
        empty: set[str] = set()
        return _union(self.equal.get(k, empty) for v in values if (k := key(v)) is not None)


def _edit(ids: set[str], record_id: str, adding: bool) -> None:
    if adding:
        ids.add(record_id)
    else:
        ids.discard(record_id)


def _union(sets: Any) -> set[str]:
    out: set[str] = set()
    for s in sets:
        out |= s
    return out


class Postings:
    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = {tuple(p.split(".")): _Field() for p in paths}

    def add(self, record_id: str, payload: str) -> None:
        self._change(record_id, payload, adding=True)

    def remove(self, record_id: str, payload: str) -> None:
        self._change(record_id, payload, adding=False)

    def _change(self, record_id: str, payload: str, adding: bool) -> None:
        if not payload or payload == "{}":
            return
        value = json.loads(payload)
        for path, postings in self.paths.items():
            postings.change(record_id, field(value, path), adding)

    def candidates(self, node: Node) -> tuple[set[str] | None, bool]:
        """(a superset of the ids where `node` is true, or None; whether it is exactly them)."""
        if isinstance(node, Cmp):
            postings = self.paths.get(node.path)
            return (None, False) if postings is None else (postings.matching(node), True)
        if isinstance(node, And) and node.terms:
            found = [self.candidates(t) for t in node.terms]
            known = [ids for ids, _ in found if ids is not None]
            if not known:
                return None, False
            smallest = min(known, key=len)
            return smallest.intersection(*[s for s in known if s is not smallest]), all(e for _, e in found)
        if isinstance(node, Or):
            found = [self.candidates(t) for t in node.terms]
            if any(ids is None for ids, _ in found):
                return None, False
            return _union(ids for ids, _ in found), all(e for _, e in found)
        return None, False  # $not, and the filter {} (no narrowing)
