"""Filters over a record's JSON payload: one parser and one evaluator for every transport and back end.

    f = parse({"category": "shoes", "price": {"$lt": 100}, "tags": {"$in": ["red", "blue"]}})
    f.matches({"category": "shoes", "price": 80, "tags": ["red"]})   # True
    milvus_expr(f, "payload")   # the same filter as a Milvus boolean expression over a JSON field

The dialect is Chroma's and Pinecone's (MongoDB's operators): `{"path": value}` is `$eq`;
`{"path": {"$op": value, ...}}` with `$eq $ne $gt $gte $lt $lte $in $nin $exists`; `$and`, `$or`
(lists of filters) and `$not` (a filter); several keys in one object all must hold. A path is
dotted (`dims.width`) into nested objects. Values are numbers, strings and booleans; `$in` and
`$nin` take lists of them.

Semantics: three-valued (Kleene) logic, as SQL and Milvus evaluate it, so that both back ends give
the same answer (docs/decisions.md §7):
- a comparison whose field is missing or null is unknown; so is its negation (`$ne`, `$nin`,
  `$not`): a record without the field never answers a comparison, negated or not;
- `$eq` and `$in` hold where the field equals a value, or is a list with an element that does;
  they are false for a field of another type (a string against a number, an object);
- `$gt $gte $lt $lte` compare numbers with numbers and strings with strings (by code point); on a
  field of another type, lists included, they are unknown;
- booleans are the numbers 1 and 0 (as in Python and Milvus): `true` equals 1;
- `$exists` is never unknown: true where the field is present and not null;
- `$and` is false if any part is, `$or` true if any part is; otherwise unknown beats the rest.
A record matches where the filter is true.

Limits (INVALID_ARGUMENT past them, naming the part): `max_bytes` of filter JSON, `max_depth`
levels of nested operators, MAX_TERMS comparisons, MAX_IN_VALUES values in one `$in`, MAX_PATH_PARTS
parts of MAX_PART_CHARS in a path. Numbers must be finite and, if whole, within ±2^53 (they compare
as float64).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidInput, shown

Scalar = bool | int | float | str
DEFAULT_MAX_BYTES = 16 << 10
DEFAULT_MAX_DEPTH = 8
MAX_TERMS = 256
MAX_IN_VALUES = 1024
MAX_PATH_PARTS = 8
MAX_PART_CHARS = 64
MAX_EXACT_INT = 1 << 53
PATH_PART = re.compile(r"[A-Za-z0-9_\-]+")
FIELD_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
LOGIC_OPS = ("$and", "$or", "$not")
RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_ABSENT = object()


@dataclass(frozen=True)
class Cmp:
    """One comparison: the field at `path` against `value` ($eq, ranges), `values` ($in) or presence."""

    path: tuple[str, ...]
    op: str  # "$eq" | "$gt" | "$gte" | "$lt" | "$lte" | "$in" | "$exists"
    value: Scalar = 0
    values: tuple[Scalar, ...] = ()


@dataclass(frozen=True)
class Not:
    term: Node


@dataclass(frozen=True)
class And:
    terms: tuple[Node, ...]  # empty: true (the filter `{}`)


@dataclass(frozen=True)
class Or:
    terms: tuple[Node, ...]


Node = Cmp | Not | And | Or


@dataclass(frozen=True)
class Filter:
    root: Node

    @property
    def everything(self) -> bool:
        return isinstance(self.root, And) and not self.root.terms

    def matches(self, payload: Any) -> bool:
        """Whether a parsed payload answers the filter (true, not false or unknown)."""
        return evaluate(self.root, payload) is True


MATCH_ALL = Filter(And(()))


# -- parsing ------------------------------------------------------------------------------------------


def parse_json(text: str, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH) -> Filter:
    """A filter sent as JSON text ("" = everything)."""
    if not text.strip():
        return MATCH_ALL
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidInput(f"filter: {size:,} bytes is over the {max_bytes:,}-byte limit")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidInput(f"filter: nests deeper than {max_depth} levels") from None
    except ValueError as e:
        raise InvalidInput(f"filter: not JSON ({e})") from e
    return parse(value, max_bytes, max_depth, size)


def parse(value: Any, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
          size: int = -1) -> Filter:  # fmt: skip
    """A filter given as a parsed JSON value (an object; None = everything)."""
    if value is None:
        return MATCH_ALL
    if size < 0:
        try:
            size = len(json.dumps(value).encode())
        except (TypeError, ValueError, RecursionError) as e:
            raise InvalidInput(f"filter: not a JSON value ({e})") from None
        if size > max_bytes:
            raise InvalidInput(f"filter: {size:,} bytes is over the {max_bytes:,}-byte limit")
    parser = _Parser(max_depth)
    return Filter(parser.filter(value, "filter", 1))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def check_path(key: str, where: str) -> tuple[str, ...]:
    """A dotted field path as filters take it, or InvalidInput naming `where`."""
    return _Parser(0).path(key, where)


class _Parser:
    def __init__(self, max_depth: int) -> None:
        self.max_depth, self.terms = max_depth, 0

    def filter(self, value: Any, where: str, depth: int) -> Node:
        if depth > self.max_depth:
            raise InvalidInput(f"{where}: nests deeper than {self.max_depth} levels")
        if not isinstance(value, dict):
            raise InvalidInput(f"{where}: a filter is a JSON object, not {_kind_name(value)}")
        terms = [self.key(k, v, f"{where}.{k}" if where != "filter" else k, depth) for k, v in value.items()]
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def key(self, key: Any, value: Any, where: str, depth: int) -> Node:
        if key in LOGIC_OPS:
            if key == "$not":
                return Not(self.filter(value, where, depth + 1))
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{where}: {key} takes a non-empty list of filters")
            parts = tuple(self.filter(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
            return And(parts) if key == "$and" else Or(parts)
        if key.startswith("$"):
            known = ", ".join(LOGIC_OPS)
            raise InvalidInput(f"{where}: unknown operator {shown(key)} (at this level: {known} or a field)")
        path = self.path(key, where)
        if isinstance(value, dict):
            if not value:
                raise InvalidInput(f"{where}: an empty object of operators")
            ops = [self.op(path, op, v, f"{where}.{op}") for op, v in value.items()]
            return ops[0] if len(ops) == 1 else And(tuple(ops))
        return self.op(path, "$eq", value, where)

    def path(self, key: str, where: str) -> tuple[str, ...]:
        parts = tuple(key.split("."))
        if len(parts) > MAX_PATH_PARTS:
            raise InvalidInput(f"{where}: a path of more than {MAX_PATH_PARTS} parts")
        for part in parts:
            if not PATH_PART.fullmatch(part) or len(part) > MAX_PART_CHARS:
                raise InvalidInput(
                    f"{where}: {shown(key)} is not a field path (dotted parts of letters, digits, _ and -, "
                    f"each at most {MAX_PART_CHARS} characters)"
                )
        return parts

    def op(self, path: tuple[str, ...], op: str, value: Any, where: str) -> Node:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise InvalidInput(f"{where}: more than {MAX_TERMS} comparisons in one filter")
        if op not in FIELD_OPS:
            raise InvalidInput(f"{where}: unknown operator {shown(op)} (one of {', '.join(FIELD_OPS)})")
        if op == "$exists":
            if not isinstance(value, bool):
                raise InvalidInput(f"{where}: $exists takes true or false, not {_kind_name(value)}")
            present = Cmp(path, "$exists")
            return present if value else Not(present)
        if op in ("$in", "$nin"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{where}: {op} takes a non-empty list of values")
            if len(value) > MAX_IN_VALUES:
                raise InvalidInput(f"{where}: {len(value):,} values is over the {MAX_IN_VALUES:,} limit")
            values = tuple(self.scalar(v, f"{where}[{i}]") for i, v in enumerate(value))
            node: Node = Cmp(path, "$in", values=values)
            return Not(node) if op == "$nin" else node
        if isinstance(value, dict):
            raise InvalidInput(
                f"{where}: a value is a number, string or boolean; nested fields take a dotted path"
            )
        if isinstance(value, list):
            raise InvalidInput(f"{where}: a list of values needs $in or $nin")
        scalar = self.scalar(value, where)
        if op in RANGE and isinstance(scalar, bool):
            raise InvalidInput(f"{where}: {op} compares numbers or strings, not booleans")
        node = Cmp(path, "$eq" if op == "$ne" else op, scalar)
        return Not(node) if op == "$ne" else node

    @staticmethod
    def scalar(value: Any, where: str) -> Scalar:
        if isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            if abs(value) > MAX_EXACT_INT:
                raise InvalidInput(
                    f"{where}: the integer {value} is beyond ±2^53 (numbers compare as float64)"
                )
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"{where}: {value} is not a finite number")
            return value
        raise InvalidInput(f"{where}: a value is a number, string or boolean, not {_kind_name(value)}")


def _kind_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


# -- evaluation -----------------------------------------------------------------------------------------


def field(payload: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path, or _ABSENT where an object on the way lacks it or is not one."""
    for part in path:
        if not isinstance(payload, dict) or part not in payload:
            return _ABSENT
        payload = payload[part]
    return payload


def _number(x: Any) -> bool:
    return isinstance(x, (int, float))  # bool is an int: true is 1


def _same(a: Any, v: Scalar) -> bool:
    if _number(v):
        return _number(a) and float(a) == float(v)
    return isinstance(a, str) and a == v


def _compare(a: Any, op: str, v: Scalar) -> bool | None:
    if _number(v):
        if not _number(a):
            return None
        a, v = float(a), float(v)
    elif not isinstance(a, str):
        return None
    return {"$gt": a > v, "$gte": a >= v, "$lt": a < v, "$lte": a <= v}[op]  # type: ignore[operator]


def evaluate(node: Node, payload: Any) -> bool | None:
    """The filter's truth on one parsed payload: True, False or None (unknown)."""
    if isinstance(node, Cmp):
        f = field(payload, node.path)
        if node.op == "$exists":
            return f is not _ABSENT and f is not None
        if f is _ABSENT or f is None:
            return None
        if node.op in RANGE:
            return _compare(f, node.op, node.value)
        values = node.values if node.op == "$in" else (node.value,)
        elements = f if isinstance(f, list) else (f,)
        return any(_same(e, v) for e in elements for v in values)
    if isinstance(node, Not):
        inner = evaluate(node.term, payload)
        return None if inner is None else not inner
    seen = [evaluate(t, payload) for t in node.terms]
    decisive = isinstance(node, Or)  # True decides an $or, False an $and
    if decisive in seen:
        return decisive
    return None if None in seen else not decisive


def matcher(f: Filter) -> Callable[[str], bool]:
    """A test of payload JSON text, for scanning stored records."""
    if f.everything:
        return lambda _text: True
    return lambda text: f.matches(json.loads(text) if text else {})


# -- Milvus ---------------------------------------------------------------------------------------------


def milvus_expr(f: Filter, column: str = "payload") -> str:
    """The filter as a Milvus boolean expression over the JSON field `column` ("" = everything).

    Milvus evaluates the same three-valued logic (a comparison of a missing field is null, `not`
    and `and`/`or` follow Kleene's tables, booleans compare as numbers), and `json_contains` is
    two-valued, so each comparison translates one to one: `$eq` is `field == v or
    json_contains_any(field, [v])` (a scalar, or a list holding it); `$in` the same over its values."""
    return "" if f.everything else _expr(f.root, column)


def _literal(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(float(v)) if isinstance(v, float) else str(v)


def _expr(node: Node, column: str) -> str:
    if isinstance(node, Cmp):
        ref = column + "".join(f"[{json.dumps(p)}]" for p in node.path)
        if node.op == "$exists":
            return f"exists {ref}"
        if node.op in RANGE:
            return f"{ref} {RANGE[node.op]} {_literal(node.value)}"
        values = node.values if node.op == "$in" else (node.value,)
        equal = [f"{ref} == {_literal(v)}" for v in values]
        listed = ", ".join(_literal(v) for v in values)
        # json_contains_any, even for one value: Milvus's parser takes a negative number in a list,
        # not as a bare function argument
        return "(" + " or ".join([*equal, f"json_contains_any({ref}, [{listed}])"]) + ")"
    if isinstance(node, Not):
        return f"not ({_expr(node.term, column)})"
    joiner = " and " if isinstance(node, And) else " or "
    if not node.terms:
        return "true"
    return "(" + joiner.join(_expr(t, column) for t in node.terms) + ")"
