"""Bulk embedding to a file, resumable: what `python -m runtime.client embed --from SRC --out OUT`
runs. No torch; the server does the work.

    items = sources(Path("photos/"))           # a folder of images, or a JSONL of items
    report = embed_to_file(client, items, Path("vectors.parquet"), skip_bad=True)

Items go to the server through EmbedStream, `batch` per request, in parts of `part_items` items.
Each finished part is written to OUT.parts/ by rename (a killed run leaves no half part), so a
re-run embeds only the parts not yet written; when all are, they are joined into OUT in source
order and the parts removed. A job file in OUT.parts/ names the source and its item count, and a
re-run of another job over the same OUT is refused rather than mixed in.

A bad item (an unreadable file, an image the server cannot decode, an empty text) stops the run
with its file or line named; with `skip_bad` it is counted, listed, and the rest go on.

Sources may be local paths or any fsspec URL (s3://, gs://, ...) whose filesystem package is
installed; runtime/batch.py reads them the same way.

Output formats, by OUT's suffix: .parquet (id, vector, code; needs pyarrow), .npy (the (N, d)
float32 vectors, with their ids one per line in OUT.ids.txt), .jsonl ({"id", "vector", "code"}).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from runtime.proto.tessera.v1 import tessera_pb2 as pb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FORMATS = (".parquet", ".npy", ".jsonl")
FAILED_ITEM = re.compile(r"request '(\d+)': item (\d+): (.*)", re.S)  # EmbedStream's error message


class BulkError(Exception):
    """A bulk job that cannot go on, in one line naming what is wrong."""


@dataclass(frozen=True)
class Source:
    """One item of a bulk job: an image file or a text, named as its source names it."""

    id: str
    name: str  # where it came from, for messages: a file path, or FILE:LINE
    text: str | None = None
    image: Path | str | None = None  # a local path, or an fsspec URL
    payload: Any = None

    def item(self) -> pb.Item:
        if self.image is not None:
            return pb.Item(image=self.read_image())
        return pb.Item(text=self.text or "")

    def read_image(self) -> bytes:
        assert self.image is not None
        try:
            if is_url(self.image):
                import fsspec

                with fsspec.open(str(self.image), "rb") as f:
                    return f.read()
            return Path(self.image).read_bytes()
        except OSError as e:
            raise BadItem(self, e.strerror or str(e)) from e

    def payload_json(self) -> str:
        return json.dumps(self.payload) if self.payload is not None else "{}"


class BadItem(Exception):
    def __init__(self, source: Source, reason: str) -> None:
        super().__init__(f"{source.name}: {reason}")
        self.source, self.reason = source, reason


def is_url(location: Path | str) -> bool:
    return isinstance(location, str) and "://" in location


def sources(spec: Path | str) -> list[Source]:
    """The items of a folder (its images, recursively, sorted; ids are paths relative to it) or of
    a JSONL file (one {"id"?, "text" | "image", "payload"?} per line; image paths relative to the
    file's folder; the id defaults to the line number). `spec` may be an fsspec URL."""
    if is_url(spec):
        return _url_sources(str(spec))
    spec = Path(spec)
    if spec.is_dir():
        files = sorted(f for f in spec.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        names = [f.relative_to(spec).as_posix() for f in files]
        return [Source(n, str(f), image=f, payload={"path": n}) for n, f in zip(names, files, strict=True)]
    if not spec.exists():
        raise BulkError(f"{spec}: no such folder or file")
    _check_jsonl(str(spec))
    folder = spec.parent
    return _jsonl_sources(str(spec), spec.read_text(encoding="utf-8"),
                          lambda image: image if is_url(image) else folder / image)  # fmt: skip


def _url_sources(spec: str) -> list[Source]:
    try:
        import fsspec
    except ImportError:
        raise BulkError(f"{spec}: reading URLs needs fsspec and its filesystem package") from None
    try:
        fs, root = fsspec.core.url_to_fs(spec)
        if fs.isdir(root):
            files = sorted(f for f in fs.find(root) if posixpath.splitext(f)[1].lower() in IMAGE_SUFFIXES)
            names = [posixpath.relpath(f, root) for f in files]
            urls = [fs.unstrip_protocol(f) for f in files]
            return [Source(n, u, image=u, payload={"path": n}) for n, u in zip(names, urls, strict=True)]
        if not fs.exists(root):
            raise BulkError(f"{spec}: no such folder or file")
        _check_jsonl(spec)
        with fs.open(root, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, ImportError, ValueError) as e:  # an unknown protocol, a missing package, access
        raise BulkError(f"{spec}: {e}") from None
    folder = posixpath.dirname(spec)
    return _jsonl_sources(spec, text, lambda image: image if is_url(image) else f"{folder}/{image}")


def _check_jsonl(spec: str) -> None:
    if not spec.lower().endswith(".jsonl"):
        raise BulkError(f"{spec}: not a folder or a .jsonl file of items")


def _jsonl_sources(spec: str, text: str, locate: Callable[[str], Path | str]) -> list[Source]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{spec}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BulkError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or ("text" in row) == ("image" in row):
            raise BulkError(f'{where}: an item is an object with one of "text" or "image"')
        image = locate(str(row["image"])) if "image" in row else None
        name = str(image) if image is not None else where
        out.append(Source(str(row.get("id", number)), name, row.get("text"), image, row.get("payload")))
    return out


@dataclass
class Part:
    """The answers for one part of a job: ids, vectors (n, d), top codes, and what was skipped."""

    ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


@dataclass(frozen=True)
class Report:
    embedded: int
    skipped: list[tuple[str, str]]
    seconds: float
    out: Path


Progress = Callable[[int, int, int], None]  # (items done, items in all, skipped so far)


class ProgressBar:
    """A one-line bar on stderr: items done of all, skipped, items/s; a Progress callback."""

    WIDTH = 30  # characters

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int, skipped: int) -> None:
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        filled = self.WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"\r[{bar}] {done:,}/{total:,} ({skipped:,} skipped) {rate:,.0f} items/s"
        print(line, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


def embed_part(client: Any, todo: list[Source], batch: int, skip_bad: bool) -> Part:
    """Embeds `todo` through EmbedStream; a bad item is skipped (or raised) and the stream resumed
    after the requests already answered."""
    part = Part()
    while todo:
        items: list[tuple[Source, pb.Item]] = []
        for s in todo:
            try:
                items.append((s, s.item()))
            except BadItem as e:
                if not skip_bad:
                    raise
                part.skipped.append((s.name, e.reason))
        batches = [items[i : i + batch] for i in range(0, len(items), batch)]
        requests = (
            pb.EmbedRequest(items=[it for _, it in b], top_codes=1, request_id=str(r))
            for r, b in enumerate(batches)
        )
        answered = 0
        try:
            for response in client.stub.EmbedStream(requests, timeout=None):
                chunk = batches[answered]
                for (s, _), e in zip(chunk, response.embeddings, strict=True):
                    part.ids.append(s.id)
                    part.vectors.append(np.frombuffer(e.vector, dtype="<f4"))
                    part.codes.append(e.codes[0].id if e.codes else -1)
                answered += 1
            todo = []
        except grpc.RpcError as e:
            failed = FAILED_ITEM.match(e.details() or "")
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT or failed is None:
                raise
            request, index, reason = int(failed[1]), int(failed[2]), failed[3]
            bad = batches[request][index][0]
            if not skip_bad:
                raise BadItem(bad, reason) from None
            part.skipped.append((bad.name, reason))
            todo = [s for b in batches[answered:] for s, _ in b if s is not bad]
    return part


def embed_to_file(
    client: Any, items: list[Source], out: Path, batch: int = 32, part_items: int = 256,
    skip_bad: bool = False, progress: Progress | None = None,
) -> Report:  # fmt: skip
    """Embeds `items` into `out` (resuming a run that was stopped); see the module's docstring."""
    if out.suffix.lower() not in FORMATS:
        raise BulkError(f"{out}: the output must end in {', '.join(FORMATS)}")
    parts_dir = out.with_name(out.name + ".parts")
    if out.exists() and not parts_dir.exists():
        raise BulkError(f"{out} exists: remove it to embed again")
    job = {"items": len(items), "part_items": part_items, "first": items[0].name if items else "",
           "last": items[-1].name if items else ""}  # fmt: skip
    parts_dir.mkdir(parents=True, exist_ok=True)
    job_file = parts_dir / "job.json"
    if job_file.exists() and json.loads(job_file.read_text()) != job:
        raise BulkError(f"{parts_dir} holds parts of another job: remove it to start over")
    write_atomically(job_file, json.dumps(job).encode())
    n_parts = -(-len(items) // part_items)
    t0, done, skipped = time.monotonic(), 0, 0
    for k in range(n_parts):
        path = parts_dir / f"part-{k:06d}.npz"
        if not path.exists():
            part = embed_part(client, items[k * part_items : (k + 1) * part_items], batch, skip_bad)
            save_part(path, part)
        saved = load_part(path)
        done += len(saved.ids) + len(saved.skipped)
        skipped += len(saved.skipped)
        if progress:
            progress(done, len(items), skipped)
    parts = [load_part(parts_dir / f"part-{k:06d}.npz") for k in range(n_parts)]
    write_output(out, parts)
    shutil.rmtree(parts_dir)
    every_skip = [s for p in parts for s in p.skipped]
    return Report(sum(len(p.ids) for p in parts), every_skip, time.monotonic() - t0, out)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_part(path: Path, part: Part) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    vectors = np.stack(part.vectors) if part.vectors else np.zeros((0, 0), np.float32)  # (n, d)
    np.savez(tmp, ids=np.array(part.ids, dtype=str), vectors=vectors, codes=np.array(part.codes, np.int32),
             skipped=np.array([json.dumps(s) for s in part.skipped], dtype=str))  # fmt: skip
    os.replace(tmp, path)


def load_part(path: Path) -> Part:
    with np.load(path) as z:
        vectors = list(z["vectors"]) if len(z["ids"]) else []
        skipped = [tuple(json.loads(s)) for s in z["skipped"].tolist()]
        return Part(z["ids"].tolist(), vectors, z["codes"].tolist(), skipped)  # type: ignore[arg-type]


def rows(parts: list[Part]) -> Iterator[tuple[str, np.ndarray, int]]:
    for p in parts:
        yield from zip(p.ids, p.vectors, p.codes, strict=True)


def write_output(out: Path, parts: list[Part]) -> None:
    """Joins the parts into `out`, in source order, through a temporary file renamed into place."""
    ids = [i for p in parts for i in p.ids]
    vectors = np.stack([v for p in parts for v in p.vectors]) if ids else np.zeros((0, 0), np.float32)
    codes = np.array([c for p in parts for c in p.codes], np.int32)
    tmp = out.with_name(out.name + ".tmp")
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BulkError("writing .parquet needs pyarrow (pip install pyarrow); or write .npy") from None
        d = vectors.shape[1] if ids else 0
        table = pa.table({
            "id": pa.array(ids, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d),
            "code": pa.array(codes, pa.int32()),
        })  # fmt: skip
        pq.write_table(table, tmp)
    elif suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float32))
        write_atomically(out.with_name(out.name + ".ids.txt"), "".join(f"{i}\n" for i in ids).encode())
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, v, c in rows(parts):
                f.write(json.dumps({"id": i, "vector": v.tolist(), "code": c}) + "\n")
    os.replace(tmp, out)
