"""`python -m runtime.batch`: embed a corpus with a bundle on Ray Data, into Parquet shards a search
backend bulk-loads (`python -m runtime.client load`; runtime/shards.py is the format).

    python -m runtime.batch --bundle bundles/flickr8k --from photos/ --out vectors/ --skip-bad
    python -m runtime.batch --bundle B --from s3://bucket/items.jsonl --out s3://bucket/vectors --address auto
    python -m runtime.client load vectors/ --collection photos

The corpus (a folder of images or a JSONL of items, runtime/bulk.py's `sources`; local or any
fsspec URL) is cut into shards of `--shard-items` items in source order. A shard is the unit of
work: one row of a Ray Dataset, mapped by a pool of actors that each hold the bundle's engines
(runtime/encoder.py: the server's preprocessing and engine calls, so the vectors equal the
server's), and written by the actor as one file moved into place. Hence:
- a worker lost mid-shard: Ray Data restarts the actor and maps the shard again; its file appears
  once, whole;
- a driver lost (kill -9): a re-run of the same command skips the shards already written;
- a bad item (unreadable, undecodable, over a limit) is counted and listed, never fatal.

Without `--address` the job starts a local Ray cluster of `--num-cpus` CPUs (default: all) and
stops it at the end; with one it joins that cluster, whose nodes need this package installed
(deploy/Dockerfile.cpu). Actors: `--workers` (default: the cluster's CPUs / `--cpus-per-worker`),
each running ONNX Runtime on `--cpus-per-worker` threads, or a GPU with `--gpus-per-worker`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.bulk import BulkError, ProgressBar, Source, sources
from runtime.bundle import BundleError, load_bundle
from runtime.config import ServeConfig
from runtime.shards import Folder, Job, ShardError

SHOWN_SKIPS = 20  # skipped items printed; all of them go to OUT/skipped.jsonl


@dataclass(frozen=True)
class Report:
    embedded: int
    skipped: list[tuple[str, str]]
    shards_run: int  # by this run; the rest were written before
    seconds: float


class ShardWorker:
    """A Ray Data actor: a shard's items in, the shard written, a one-row summary out."""

    def __init__(self, bundle: str, out: str, cfg: dict[str, Any], top_codes: int) -> None:
        from runtime.encoder import Encoder

        self.encoder = Encoder(load_bundle(bundle), ServeConfig(**cfg), top_codes)
        self.folder = Folder(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        shards, done, skipped = [], [], []
        for k, items_json in zip(batch["shard"], batch["items"], strict=True):
            items = [Source(**row) for row in json.loads(items_json)]
            out = self.encoder.encode(items)
            self.folder.write_shard(int(k), self.encoder.fingerprint, out.ids, out.vectors, out.codes,
                                    out.payloads, out.skipped)  # fmt: skip
            shards.append(int(k))
            done.append(len(items))
            skipped.append(len(out.skipped))
        return {"shard": shards, "items": done, "skipped": skipped}


def run(
    bundle: str, source: str, out: str, shard_items: int = 1024, top_codes: int = 1,
    workers: int = 0, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
    cfg: dict[str, Any] | None = None, address: str | None = None, num_cpus: int | None = None,
    progress: ProgressBar | None = None,
) -> Report:  # fmt: skip
    """Embeds `source` into the vectors folder `out`, resuming a run that was stopped (see the
    module's docstring). `cfg`: ServeConfig fields for the engines (backend, int8, cpu_threads...)."""
    import ray
    import ray.data

    t0 = time.monotonic()
    manifest = load_bundle(bundle).manifest
    items = sources(source)
    if not items:
        raise BulkError(f"{source}: no items in it")
    folder = Folder(out)
    job = Job(manifest.fingerprint, manifest.embed_dim, min(top_codes, manifest.codebook_size), source,
              len(items), shard_items, items[0].name, items[-1].name)  # fmt: skip
    folder.start(job)
    todo = sorted(set(range(job.shards)) - folder.done())
    cfg = {"bundle": bundle, "cpu_threads": max(1, int(cpus_per_worker)), **(cfg or {})}
    rows = [{"shard": k, "items": json.dumps([_row(s) for s in items[k * shard_items :][:shard_items]])}
            for k in todo]  # fmt: skip
    done = len(items) - sum(min(shard_items, len(items) - k * shard_items) for k in todo)
    skipped = sum(len(folder.shard_meta(k)[2]) for k in set(range(job.shards)) - set(todo))
    if progress:
        progress(done, len(items), skipped)
    if rows:
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts items; Ray's counts blocks
        context.print_on_execution_start = False
        size = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        size = min(size, len(rows))
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={"bundle": bundle, "out": out, "cfg": cfg, "top_codes": top_codes},
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
        )  # fmt: skip
        try:
            for row in dataset.iter_rows():
                done += int(row["items"])
                skipped += int(row["skipped"])
                if progress:
                    progress(done, len(items), skipped)
        finally:
            if started_here:
                ray.shutdown()
    metas = [folder.shard_meta(k) for k in range(job.shards)]
    every_skip = [s for _, _, skips in metas for s in skips]
    folder.write_skipped(every_skip)
    return Report(sum(rows_ for rows_, _, _ in metas), every_skip, len(rows), time.monotonic() - t0)


def _row(s: Source) -> dict[str, Any]:
    """A Source as JSON (the image location as a string)."""
    return {"id": s.id, "name": s.name, "text": s.text, "image": None if s.image is None else str(s.image),
            "payload": s.payload}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--bundle", required=True, help="the bundle directory (python -m export)")
    p.add_argument("--from", dest="source", required=True, help="a folder of images or a JSONL (or URLs)")
    p.add_argument("--out", required=True, help="the vectors folder to write (or a URL)")
    p.add_argument("--shard-items", type=int, default=1024, help="items per shard, a unit of work (1024)")
    p.add_argument("--top-codes", type=int, default=1, help="top codes kept per item (default 1)")
    p.add_argument("--workers", type=int, default=0, help="actors (default: CPUs / --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs each actor takes (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs each actor takes (default 0)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt (as `runtime serve`)")
    p.add_argument("--int8", default="off", choices=("off", "on", "auto"), help="as `runtime serve`")
    p.add_argument("--address", help="join this Ray cluster (auto, ray://head:10001); default: a local one")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    bar = ProgressBar()
    try:
        report = run(
            args.bundle, args.source, args.out, args.shard_items, args.top_codes, args.workers,
            args.cpus_per_worker, args.gpus_per_worker, {"backend": args.backend, "int8": args.int8},
            args.address, args.num_cpus, bar,
        )  # fmt: skip
    except (BulkError, ShardError, BundleError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"\nerror: the batch job needs Ray Data: pip install 'tessera-embed[batch]' ({e})",
              file=sys.stderr)  # fmt: skip
        return 1
    bar.close()
    for name, reason in report.skipped[:SHOWN_SKIPS]:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if len(report.skipped) > SHOWN_SKIPS:
        more = len(report.skipped) - SHOWN_SKIPS
        print(f"... and {more:,} more in {args.out}/skipped.jsonl", file=sys.stderr)
    summary = {"embedded": report.embedded, "skipped": len(report.skipped), "shards_run": report.shards_run,
               "seconds": round(report.seconds, 2), "out": args.out}  # fmt: skip
    print(json.dumps(summary) if args.json else
          f"{report.embedded:,} embedded, {len(report.skipped):,} skipped ({report.shards_run} shards run) "
          f"in {report.seconds:.1f} s -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
