"""`python -m runtime.client`: the command line over the whole API (runtime/client.py's client).

    python -m runtime.client info
    python -m runtime.client embed --text "a dog" --image dog.jpg --image photos/
    python -m runtime.client embed --from photos/ --out vectors.parquet --skip-bad     # bulk, resumable
    python -m runtime.client lookup --text "a dog" --top-k 3          # codes of items or --vector FILE
    python -m runtime.client lookup --code 7 --code 9                 # code vectors by id
    python -m runtime.client collections [create NAME --backend milvus | drop NAME]
    python -m runtime.client index photos/ --collection photos        # a folder, or items.jsonl
    python -m runtime.client load vectors/ --collection photos        # shards of python -m runtime.batch
    python -m runtime.client search --collection photos --text "a dog" --nprobe 8 --filter '{"year": 2024}'
    python -m runtime.client count --collection photos --filter '{"tags": "beach"}'
    python -m runtime.client get --collection photos ID... [--vectors]
    python -m runtime.client list --collection photos --limit 50 [--cursor LAST_ID] [--filter JSON]
    python -m runtime.client delete --collection photos ID...  |  --filter JSON

The connection options (--target, TLS, --api-key) and --json are accepted before or after the
command. --json prints one JSON object per line; errors go to stderr as one line, exit code 1
(2 for a mistake on the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from runtime.bulk import IMAGE_SUFFIXES, BadItem, BulkError, ProgressBar, embed_to_file, sources
from runtime.client import TesseraClient, image_item, vector_item
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.shards import ShardError


class CliError(Exception):
    """A one-line error for the user (exit 1)."""


def connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes; on subcommands their defaults are left to the top parser."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--target", default=d(os.environ.get("TESSERA_TARGET", "127.0.0.1:50051")),
                        help="HOST:PORT of the gRPC port [$TESSERA_TARGET; 127.0.0.1:50051]")  # fmt: skip
    parser.add_argument("--tls-ca", default=d(None), help="the server's CA certificate (PEM): use TLS")
    parser.add_argument("--tls-cert", default=d(None), help="this client's certificate (PEM), for mTLS")
    parser.add_argument("--tls-key", default=d(None), help="its private key (PEM)")
    parser.add_argument("--api-key", default=d(os.environ.get("TESSERA_API_KEY")),
                        help="an API key (default: $TESSERA_API_KEY)")  # fmt: skip
    parser.add_argument("--timeout-s", type=float, default=d(30.0), help="per call (bulk streams: none)")
    parser.add_argument("--json", action="store_true", default=d(False), help="one JSON object per line")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.client", description="Call a Tessera server.", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    connection_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        connection_options(c, top=False)
        return c

    command("info", "the model, its limits and engines")
    e = command("embed", "embed texts and images; or, with --from, a folder or JSONL into a file")
    items_options(e)
    e.add_argument("--top-k", type=int, default=3, help="codes per item (default 3)")
    e.add_argument("--from", dest="source", type=Path, help="bulk: a folder of images or a JSONL of items")
    e.add_argument("--out", type=Path, help="bulk: the file to write (.parquet, .npy or .jsonl)")
    e.add_argument("--batch", type=int, default=32, help="bulk: items per request (default 32)")
    e.add_argument("--part-items", type=int, default=256, help="bulk: items per resumable part (default 256)")
    e.add_argument("--skip-bad", action="store_true", help="bulk: skip bad files, count and list them")
    lk = command("lookup", "top codes of items or vectors; code vectors by id")
    items_options(lk)
    lk.add_argument("--vector", type=Path, action="append", default=[], help="a .npy of vectors (repeatable)")
    lk.add_argument("--code", type=int, action="append", default=[], help="a code id whose vector to print")
    lk.add_argument("--top-k", type=int, default=3, help="codes per item (default 3)")
    col = command("collections", "list collections; create or drop one")
    col.add_argument("action", nargs="?", choices=("list", "create", "drop"), default="list",
                     help="list (the default), create or drop")  # fmt: skip
    col.add_argument("name", nargs="?", help="the collection to create or drop")
    col.add_argument("--backend", default="builtin", help="for create: builtin | milvus (default builtin)")
    col.add_argument(
        "--index", action="append", default=[], help="for create: a payload field to index (repeatable)"
    )
    ix = command("index", "upsert a folder of images or a JSONL of items into a collection")
    ix.add_argument("source", type=Path, help="a folder (images, recursively) or a .jsonl of items")
    ix.add_argument("--collection", required=True, help="created (with --backend) if it does not exist")
    ix.add_argument("--backend", default="builtin", help="for a new collection: builtin | milvus")
    ix.add_argument("--batch", type=int, default=32, help="records per Upsert (default 32)")
    ix.add_argument("--skip-bad", action="store_true", help="skip unreadable files, count and list them")
    ld = command("load", "bulk-load a vectors folder (python -m runtime.batch) into a collection")
    ld.add_argument("folder", help="the vectors folder (or an fsspec URL)")
    ld.add_argument("--collection", required=True, help="created (with --backend) if it does not exist")
    ld.add_argument("--backend", default="builtin", help="for a new collection: builtin | milvus")
    se = command("search", "search a collection by text, image or vector")
    se.add_argument("--collection", required=True, help="the collection to search")
    parts = {"dest": "parts", "action": QueryPartAction, "default": []}
    se.add_argument("--text", **parts, help="a text as the query, or one part of it (repeatable)")
    se.add_argument("--image", **parts, help="an image file as the query or a part (repeatable)")
    se.add_argument("--vector", **parts, help="a .npy holding one vector (or --row of many) (repeatable)")
    se.add_argument("--like", **parts, help="a record id: its stored vector as a part (more like this)")
    se.add_argument(
        "--weight", **parts, help="the weight of the part before it (default 1; negative pushes away)"
    )
    se.add_argument("--row", type=int, default=0, help="which row of --vector (default 0)")
    se.add_argument("--offset", type=int, default=0, help="skip this many best hits (the next page)")
    se.add_argument("--top-k", type=int, default=5, help="hits (default 5)")
    se.add_argument("--nprobe", type=int, default=0, help="lists to search (0 = exact, the default)")
    se.add_argument(
        "--filter", default="", help='which records may answer: JSON, e.g. \'{"category": "shoes"}\''
    )
    co = command("count", "count a collection's records, all or those a filter matches")
    co.add_argument("--collection", required=True, help="the collection to count")
    co.add_argument("--filter", default="", help="JSON, as search's (default: every record)")
    de = command("delete", "delete records by id, or every record a filter matches")
    de.add_argument("--collection", required=True, help="the collection to delete from")
    de.add_argument("--filter", default="", help="JSON, as search's: delete what it matches (instead of ids)")
    de.add_argument("ids", nargs="*", help="record ids")
    ge = command("get", "records by id: payload, top code and (--vectors) vector")
    ge.add_argument("--collection", required=True, help="the collection to read")
    ge.add_argument("--vectors", action="store_true", help="print the vectors too")
    ge.add_argument("ids", nargs="+", help="record ids")
    li = command("list", "records in id order, a page at a time")
    li.add_argument("--collection", required=True, help="the collection to list")
    li.add_argument("--filter", default="", help="JSON, as search's (default: every record)")
    li.add_argument("--limit", type=int, default=100, help="records per page (default 100)")
    li.add_argument("--cursor", default="", help="the next_cursor a page printed (default: the start)")
    return p


def items_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", action="append", default=[], help="a text (repeatable)")
    p.add_argument("--image", action="append", default=[], type=Path,
                   help="an image file, or a folder of them (repeatable)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with TesseraClient(args.target, args.timeout_s, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, api_key=args.api_key) as client:  # fmt: skip
            return COMMANDS[args.command](client, args, Out(args.json))
    except grpc.RpcError as e:
        return fail(f"{e.code().name}: {e.details()}")
    except (CliError, BulkError, BadItem, ShardError) as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


class Out:
    """Human lines, or one JSON object per line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, human: str, record: dict[str, Any]) -> None:
        print(json.dumps(record) if self.as_json else human)


# -- commands ---------------------------------------------------------------------------------------


def info(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    i = client.info()
    from google.protobuf.json_format import MessageToDict

    out(str(i).rstrip(), MessageToDict(i, preserving_proto_field_name=True))
    return 0


def embed(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    if args.source is not None or args.out is not None:
        return bulk(client, args, out)
    names, items = named_items(args.text, args.image)
    if not items:
        raise CliError("give --text or --image (or --from and --out for a bulk job)")
    result = client.embed(items, top_codes=args.top_k)
    for name, vector, codes in zip(names, result.vectors, result.codes, strict=True):
        head = " ".join(f"{x:+.3f}" for x in vector[:6])
        top = ", ".join(f"{c}:{s:.3f}" for c, s in codes)
        out(f"{name}\n  vector[{len(vector)}] = [{head} …]\n  codes  = {top}",
            {"item": name, "vector": vector.tolist(), "codes": codes})  # fmt: skip
    print(f"model {result.fingerprint[:12]}  total {result.timings.total_ms:.1f} ms", file=sys.stderr)
    return 0


def bulk(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    if args.source is None or args.out is None:
        raise CliError("a bulk job needs both --from and --out")
    items = sources(args.source)
    bar = ProgressBar()
    report = embed_to_file(client, items, args.out, args.batch, args.part_items, args.skip_bad, bar)
    bar.close()
    for name, reason in report.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    out(f"{report.embedded:,} embedded, {len(report.skipped):,} skipped -> {report.out}",
        {"embedded": report.embedded, "skipped": [{"name": n, "reason": r} for n, r in report.skipped],
         "out": str(report.out)})  # fmt: skip
    return 0


def lookup(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    names, items = named_items(args.text, args.image)
    for path in args.vector:
        vectors = np.atleast_2d(np.load(path)).astype(np.float32)  # (n, d)
        names += [f"{path}[{i}]" for i in range(len(vectors))]
        items += [vector_item(v) for v in vectors]
    if not items and not args.code:
        raise CliError("give --text, --image, --vector or --code")
    if items:
        for name, codes in zip(names, client.lookup(items, top_k=args.top_k), strict=True):
            out(f"{name}: " + ", ".join(f"{c}:{s:.3f}" for c, s in codes), {"item": name, "codes": codes})
    if args.code:
        for code, vector in zip(args.code, client.code_vectors(args.code), strict=True):
            head = " ".join(f"{x:+.3f}" for x in vector[:6])
            out(f"code {code}: [{head} …]", {"code": code, "vector": vector.tolist()})
    return 0


def collections(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    if args.action != "list" and not args.name:
        raise CliError(f"collections {args.action} needs a NAME")
    if args.action == "create":
        c = client.create_collection(args.name, args.backend, args.index)
        record = {
            "created": c.name,
            "backend": c.backend,
            "dim": c.dim,
            "indexed_fields": list(c.indexed_fields),
        }
        out(f"created {c.name} ({c.backend}, d={c.dim})", record)
    elif args.action == "drop":
        client.drop_collection(args.name)
        out(f"dropped {args.name}", {"dropped": args.name})
    else:
        for c in client.list_collections():
            out(f"{c.name}\t{c.backend}\t{c.count} records\td={c.dim}\tmodel {c.fingerprint[:12]}",
                {"name": c.name, "backend": c.backend, "count": c.count, "dim": c.dim,
                 "fingerprint": c.fingerprint})  # fmt: skip
    return 0


def index(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    items = sources(args.source)  # a missing folder is an error, not an empty collection
    if not items:
        raise CliError(f"{args.source}: no images ({', '.join(IMAGE_SUFFIXES)}) or items in it")
    if args.collection not in {c.name for c in client.list_collections()}:
        client.create_collection(args.collection, args.backend)
    done, skipped = 0, []
    for start in range(0, len(items), args.batch):
        records = []
        for s in items[start : start + args.batch]:
            try:
                records.append(pb.Record(id=s.id, content=s.item(), payload_json=json.dumps(s.payload or {})))
            except BadItem as e:
                if not args.skip_bad:
                    raise
                skipped.append((s.name, e.reason))
        if records:
            done += client.stub.Upsert(pb.UpsertRequest(collection=args.collection, records=records),
                                       timeout=client.timeout_s).upserted  # fmt: skip
        print(f"\rindexed {done:,}/{len(items):,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    out(f"indexed {done:,} items into {args.collection} ({len(skipped)} skipped)",
        {"indexed": done, "collection": args.collection,
         "skipped": [{"name": n, "reason": r} for n, r in skipped]})  # fmt: skip
    return 0


def load(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    bar, t0 = ProgressBar(), time.monotonic()
    loaded = client.load_vectors(args.folder, args.collection, args.backend, bar)
    bar.close()
    seconds = time.monotonic() - t0
    out(f"loaded {loaded:,} records into {args.collection} in {seconds:.1f} s",
        {"loaded": loaded, "collection": args.collection, "seconds": round(seconds, 2)})  # fmt: skip
    return 0


class QueryPartAction(argparse.Action):
    """--text/--image/--vector/--like append a part in command-line order; --weight sets the
    weight of the part before it."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, flag: Any = None) -> None:
        parts = [*getattr(namespace, self.dest, [])]
        if self.option_strings[0] == "--weight":
            if not parts:
                raise argparse.ArgumentError(self, "--weight follows the part it weighs")
            try:
                parts[-1] = (*parts[-1][:2], float(value))
            except ValueError:
                raise argparse.ArgumentError(self, f"{value!r} is not a number") from None
        else:
            parts.append((self.option_strings[0].removeprefix("--"), value, 1.0))
        setattr(namespace, self.dest, parts)


def search(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    if not args.parts:
        raise CliError("search needs a query: --text, --image, --vector or --like (repeat them to compose)")
    request = pb.SearchRequest(collection=args.collection, top_k=args.top_k, nprobe=args.nprobe,
                               filter_json=args.filter, offset=args.offset)  # fmt: skip
    for kind, value, weight in args.parts:
        if kind == "like":
            request.parts.add(record_id=value, weight=weight)
            continue
        if kind == "text":
            item = pb.Item(text=value)
        elif kind == "image":
            item = image_item(Path(value))
        else:
            item = vector_item(np.atleast_2d(np.load(value))[args.row])
        request.parts.add(item=item, weight=weight)
    if len(request.parts) == 1 and request.parts[0].HasField("item") and request.parts[0].weight == 1.0:
        request.query.CopyFrom(request.parts.pop().item)  # a plain query: what older servers take
    reply = client.stub.Search(request, timeout=client.timeout_s)
    for rank, h in enumerate(reply.hits, start=1):
        payload = json.loads(h.payload_json or "null")
        out(f"{rank:2d}. {h.score:.3f}  {h.id}  code {h.code}  {json.dumps(payload)}",
            {"rank": rank, "id": h.id, "score": h.score, "code": h.code, "payload": payload})  # fmt: skip
    return 0


def count(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    reply = client.stub.Count(pb.CountRequest(collection=args.collection, filter_json=args.filter),
                              timeout=client.timeout_s)  # fmt: skip
    out(f"{reply.count:,} records", {"collection": args.collection, "count": reply.count})
    return 0


def delete(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    if bool(args.ids) == bool(args.filter):
        raise CliError("delete needs record ids or --filter (one of them)")
    request = pb.DeleteRequest(collection=args.collection, ids=args.ids, filter_json=args.filter)
    n = client.stub.Delete(request, timeout=client.timeout_s).deleted
    if args.filter:
        out(f"deleted {n} matching {args.filter}", {"deleted": n, "filter": json.loads(args.filter)})
    else:
        out(f"deleted {n} of {len(args.ids)}", {"deleted": n, "asked": len(args.ids)})
    return 0


def get(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    request = pb.GetRequest(collection=args.collection, ids=args.ids, with_vectors=args.vectors)
    reply = client.stub.Get(request, timeout=client.timeout_s)
    for r in reply.records:
        stored_out(r, out)
    for missing in reply.missing:
        out(f"{missing}  (not in {args.collection})", {"id": missing, "missing": True})
    return 0


def list_records(client: TesseraClient, args: argparse.Namespace, out: Out) -> int:
    request = pb.ListRecordsRequest(
        collection=args.collection, limit=args.limit, cursor=args.cursor, filter_json=args.filter
    )
    reply = client.stub.ListRecords(request, timeout=client.timeout_s)
    for r in reply.records:
        stored_out(r, out)
    more = f"next page: --cursor {shlex.quote(reply.next_cursor)}" if reply.next_cursor else "(the end)"
    out(more, {"next_cursor": reply.next_cursor})
    return 0


def stored_out(r: pb.StoredRecord, out: Out) -> None:
    payload = json.loads(r.payload_json or "null")
    record: dict[str, Any] = {"id": r.id, "code": r.code, "payload": payload}
    human = f"{r.id}  code {r.code}  {json.dumps(payload)}"
    if r.vector:
        vector = np.frombuffer(r.vector, dtype="<f4")  # (d,)
        record["vector"] = vector.tolist()
        human += f"  [{', '.join(f'{x:.4f}' for x in vector[:4])}, …] (d={vector.size})"
    out(human, record)


COMMANDS: dict[str, Callable[[TesseraClient, argparse.Namespace, Out], int]] = {
    "info": info, "embed": embed, "lookup": lookup, "collections": collections, "index": index,
    "load": load, "search": search, "count": count, "delete": delete, "get": get, "list": list_records,
}  # fmt: skip


def named_items(texts: list[str], images: list[Path]) -> tuple[list[str], list[pb.Item]]:
    """Items with the names messages use: texts, then each image (a folder: its images, sorted)."""
    names, items = [f"text {t!r}" for t in texts], [pb.Item(text=t) for t in texts]
    for path in images:
        files = sources(path) if path.is_dir() else None
        for s in files if files is not None else []:
            names.append(f"image {s.name}")
            items.append(s.item())
        if files is None:
            names.append(f"image {path}")
            items.append(image_item(path))
    return names, items
