"""Records by id, the paged listing and delete-by-filter on both back ends (runtime/index/base.py's
`get`, `page`, `delete_where`), against brute force over what the test wrote; and the listing's
exactly-once rule while another thread writes and deletes."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.errors import InvalidInput
from runtime.index.base import Collection
from runtime.index.filters import parse
from runtime.index.registry import Collections

D, K = 8, 4
ODD_IDS = ['quote"d', "back\\slash", "é-accent", "日本", "tab\there", "z" * 200]  # Milvus must escape them


def backends() -> list[str]:
    return ["builtin", "milvus"]


def opened(tmp_path: Path, backend: str) -> tuple[Collections, Collection]:
    if backend == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    reg = Collections(tmp_path, D, K, "f" * 64)
    return reg, reg.create("c", backend)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, D)).astype(np.float32)  # (n, D)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def listed(
    c: Collection, limit: int, where: Any = None, between: Callable[[], None] = lambda: None
) -> list[list[str]]:
    flt = parse(where)
    pages, cursor = [], ""
    while True:
        page = c.page(cursor, limit, flt)
        if not page:
            return pages
        pages.append([i for i, _ in page])
        cursor = page[-1][0]
        between()


@pytest.mark.parametrize("backend", backends())
def test_get_list_count_and_delete_by_filter_agree_with_brute_force(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(0)
    ids = [f"r{i:03d}" for i in range(120)] + ODD_IDS
    colours = ["red", "blue", "green"]
    payloads = [{"n": i, "colour": colours[i % 3], "tags": ["a", "b"][: i % 3]} for i in range(len(ids))]
    vectors, codes = unit(rng, len(ids)), rng.integers(0, K, len(ids)).astype(np.int32)
    reg, c = opened(tmp_path, backend)
    c.upsert(ids, vectors, codes, [json.dumps(p) for p in payloads])

    asked = ["r005", "nope", ODD_IDS[0], "r005", "r119"]
    got = c.get(asked)
    assert set(got) == {"r005", ODD_IDS[0], "r119"}
    for i in got:
        j = ids.index(i)
        assert json.loads(got[i].payload) == payloads[j] and got[i].code == codes[j]
        assert got[i].vector is not None and np.allclose(got[i].vector, vectors[j], atol=1e-6)
    assert all(s.vector is None for s in c.get(["r001"], vectors=False).values())

    pages = listed(c, 7)
    assert [i for p in pages for i in p] == sorted(ids) and all(len(p) == 7 for p in pages[:-1])
    flt = {"colour": "red", "n": {"$gte": 30}}
    red = sorted(i for i, p in zip(ids, payloads, strict=True) if p["colour"] == "red" and p["n"] >= 30)
    assert [i for p in listed(c, 5, flt) for i in p] == red
    assert c.count(parse(flt)) == len(red)

    assert c.delete_where(parse({"tags": "b"})) == sum("b" in p["tags"] for p in payloads)
    left = [i for i, p in zip(ids, payloads, strict=True) if "b" not in p["tags"]]
    assert c.count() == len(left) and [i for p in listed(c, 50) for i in p] == sorted(left)
    assert c.delete_where(parse({"tags": "b"})) == 0
    reg.close()


@pytest.mark.parametrize("backend", backends())
def test_a_listing_returns_every_record_present_throughout_exactly_once(tmp_path: Path, backend: str) -> None:
    """Stable records stay for the whole listing (their payloads rewritten meanwhile); others are
    written and deleted around and between them while the pages are read."""
    rng, pick = np.random.default_rng(1), random.Random(1)
    stable = [f"s{pick.randrange(10**6):06d}" for _ in range(300)]
    stable = list(dict.fromkeys(stable))
    reg, c = opened(tmp_path, backend)
    c.upsert(stable, unit(rng, len(stable)), np.zeros(len(stable), np.int32), ["{}"] * len(stable))
    done, churned, rounds = threading.Event(), [], threading.Semaphore(0)

    def churn() -> None:
        wrng, n = np.random.default_rng(2), 0
        while not done.is_set():
            rounds.release()
            fresh = [f"s{pick.randrange(10**6):06d}x" for _ in range(8)]  # sort between the stable ones
            c.upsert(fresh, unit(wrng, 8), wrng.integers(0, K, 8).astype(np.int32), ["{}"] * 8)
            churned.extend(fresh)
            c.delete(pick.sample(churned, 4))
            again = pick.sample(stable, 4)
            codes = wrng.integers(0, K, 4).astype(np.int32)
            c.upsert(again, unit(wrng, 4), codes, [json.dumps({"n": n})] * 4)
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        pages = listed(c, 13, between=lambda: rounds.acquire(timeout=10))  # writes between every two pages
    finally:
        done.set()
        writer.join()
    seen = [i for p in pages for i in p]
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # in order, nothing twice
    assert not set(stable) - set(seen)  # every record present throughout
    assert len(churned) >= 8 * len(pages) - 8
    reg.close()


@pytest.mark.parametrize("backend", backends())
def test_declared_fields_survive_a_restart_and_a_bad_one_is_refused(tmp_path: Path, backend: str) -> None:
    reg, _ = opened(tmp_path, backend)
    c = reg.create("indexed", backend, ["colour", "dims.w", "colour"])
    assert c.spec.indexed == ("colour", "dims.w")
    payloads = [json.dumps({"colour": ["red", "blue"][i % 2], "dims": {"w": i}}) for i in range(40)]
    c.upsert(
        [f"r{i}" for i in range(40)], unit(np.random.default_rng(3), 40), np.zeros(40, np.int32), payloads
    )
    c.delete(["r0", "r1"])
    reg.close()
    again = Collections(tmp_path, D, K, "f" * 64)
    c = again.get("indexed")
    assert c.spec.indexed == ("colour", "dims.w")
    assert c.count(parse({"colour": "red", "dims.w": {"$gte": 10}})) == len(range(10, 40, 2))
    with pytest.raises(InvalidInput, match=r"indexed field 'a\.\.b': 'a\.\.b' is not a field path"):
        again.create("bad", backend, ["a..b"])
    again.close()
