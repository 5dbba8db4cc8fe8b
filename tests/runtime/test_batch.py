"""The batch job (`python -m runtime.batch`, runtime/batch.py) on a local Ray cluster of 2 CPUs and
its shards (runtime/shards.py) loaded by `python -m runtime.client load`: vectors equal to the
server's, a worker killed mid-job and the driver killed with kill -9 cost no item and duplicate
none, bad items are listed, shards of another model are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.bulk import sources
from runtime.bundle import load_bundle
from runtime.config import ServeConfig
from runtime.encoder import Encoder
from runtime.shards import Folder, Job, ShardError
from tests.conftest import REPO_ROOT
from tests.helpers import corpus
from tests.runtime.conftest import Server

SHARD_ITEMS = 50


def job(bundle: Path, source: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "runtime.batch", "--bundle", str(bundle), "--from", str(source),
            "--out", str(out), "--num-cpus", "2", "--shard-items", str(SHARD_ITEMS), *flags]  # fmt: skip


def shards_in(out: Path) -> int:
    return len(list(out.glob("shard-*.parquet")))


def wait_for(out: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while shards_in(out) < n:
        assert proc.poll() is None, f"the job ended with {shards_in(out)} shards written, before {n}"
        assert time.monotonic() < deadline, f"{shards_in(out)} shards written in 180 s"
        time.sleep(0.02)


def workers() -> set[int]:
    """The pids of the job's Ray Data actors (Ray names their processes after the mapped class)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ShardWorker" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def read_all(out: Path) -> tuple[list[str], np.ndarray]:
    folder = Folder(str(out))
    shards = [s for _, s in folder.shards(folder.job())]
    return [i for s in shards for i in s.ids], np.concatenate([s.vectors for s in shards])  # (n, d)


def test_the_batch_job_survives_a_lost_worker_and_a_killed_driver(
    bundle: Path, server: Server, tmp_path: Path
) -> None:
    """1,000 images and 5,000 texts (and two bad items): one actor killed mid-job, then the driver
    killed with kill -9; the re-run writes only the missing shards, and the whole equals the
    server's vectors item for item."""
    pytest.importorskip("ray.data", reason="the batch job runs on Ray Data: the `batch` extra")
    jsonl, captions = corpus(tmp_path, 5000, 1000)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    with jsonl.open("a") as f:
        f.write(json.dumps({"id": "gone", "image": "img/missing.png"}) + "\n")
        f.write(json.dumps({"id": "broken", "image": "img/broken.png"}) + "\n")
    out = tmp_path / "vectors"
    total = -(-6002 // SHARD_ITEMS)
    first = subprocess.Popen(job(bundle, jsonl, out), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(out, 5, first)
        victims = workers()
        assert victims, "no Ray Data actor found to kill"
        victim = min(victims)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not (workers() - victims):  # the actor restarted: a new process
            assert first.poll() is None and time.monotonic() < deadline, "the lost worker was not replaced"
            time.sleep(0.05)
        wait_for(out, shards_in(out) + 3, first)  # and the job goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    deadline = time.monotonic() + 60
    while workers():  # the local cluster goes down with its driver; an actor may finish its shard first
        assert time.monotonic() < deadline, "Ray's actors outlived the driver by a minute"
        time.sleep(0.05)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert 5 <= len(written) < total
    second = subprocess.run(job(bundle, jsonl, out, "--json"), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout.splitlines()[-1])
    assert report["embedded"] == 6000 and report["skipped"] == 2
    assert report["shards_run"] == total - len(written)
    assert {p: t for p, t in written.items() if (out / p).stat().st_mtime_ns == t} == written  # not redone
    ids, vectors = read_all(out)
    assert ids == [f"t{i}" for i in range(5000)] + [f"i{i}" for i in range(1000)]  # no duplicate, no gap
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [Path(s["name"]).name for s in skipped] == ["missing.png", "broken.png"]
    assert "No such file" in skipped[0]["reason"] and "could not be decoded" in skipped[1]["reason"]
    sample = [0, 1234, 4999, 5000, 5555, 5999]
    with server.client() as client:
        want = np.concatenate([
            client.embed_texts([captions[i]]) if i < 5000
            else client.embed_images([tmp_path / "img" / f"img{i - 5000:04d}.png"])
            for i in sample
        ])  # fmt: skip
    assert np.abs(vectors[sample] - want).max() <= 1e-6


def encode_into(bundle: Path, source: Path, out: Path, shard_items: int) -> Job:
    """A vectors folder written without Ray, by the same Encoder and Folder the job's actors use."""
    manifest = load_bundle(bundle).manifest
    items = sources(source)
    job = Job(manifest.fingerprint, manifest.embed_dim, 1, str(source), len(items), shard_items,
              items[0].name, items[-1].name)  # fmt: skip
    folder, encoder = Folder(str(out)), Encoder(load_bundle(bundle), ServeConfig(cpu_threads=1))
    folder.start(job)
    for k in range(job.shards):
        e = encoder.encode(items[k * shard_items :][:shard_items])
        folder.write_shard(k, job.fingerprint, e.ids, e.vectors, e.codes, e.payloads, e.skipped)
    return job


def load(server: Server, folder: Path, collection: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runtime.client", "load", str(folder), "--collection", collection,
           "--target", server.target, "--json"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr
    return done


def test_load_puts_every_shard_in_a_collection_and_refuses_another_models(
    bundle: Path, server: Server, tmp_path: Path
) -> None:
    jsonl, _ = corpus(tmp_path, 300, 40)
    out = tmp_path / "vectors"
    encode_into(bundle, jsonl, out, 64)
    assert json.loads(load(server, out, "loaded").stdout)["loaded"] == 340
    ids, vectors = read_all(out)
    with server.client() as client:
        assert {c.name: c.count for c in client.list_collections()}["loaded"] == 340
        for row in (0, 299, 300, 339):  # the tiny model gives some items equal vectors: any of those
            hits = client.search("loaded", vectors[row], top_k=20)
            assert ids[row] in {i for i, score, _ in hits if score > 1 - 1e-5}

    other = tmp_path / "other-model"
    shutil.copytree(out, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "f" * 64}))
    refused = load(server, other, "elsewhere", ok=False)
    assert "vectors of model ffffffffffff" in refused.stderr and "the server serves" in refused.stderr

    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shard = Folder(str(mixed)).read_shard(2)
    codes = np.zeros((len(shard.ids), 1), np.int32)
    Folder(str(mixed)).write_shard(2, "e" * 64, shard.ids, shard.vectors, codes, shard.payloads, [])
    refused = load(server, mixed, "elsewhere", ok=False)
    assert "shard-000002.parquet: vectors of model eeeeeeeeeeee" in refused.stderr


def test_a_vectors_folder_refuses_another_job_and_reads_sources_by_url(bundle: Path, tmp_path: Path) -> None:
    jsonl, _ = corpus(tmp_path, 30, 5)
    assert [(s.id, s.text, s.read_image() if s.image else None) for s in sources(jsonl.as_uri())] == [
        (s.id, s.text, s.read_image() if s.image else None) for s in sources(jsonl)
    ]  # a file:// URL reads as the local path does (any fsspec filesystem the same way)
    job = encode_into(bundle, jsonl, tmp_path / "v", 16)
    folder = Folder(str(tmp_path / "v"))
    assert folder.done() == {0, 1, 2} and folder.job() == job
    folder.start(job)  # the same job again: a re-run, accepted
    with pytest.raises(ShardError, match=r"holds shards of another job \(shard_items differ\)"):
        folder.start(Job(**{**job.__dict__, "shard_items": 8}))
    (tmp_path / "v" / "shard-000001.parquet").unlink()
    with pytest.raises(ShardError, match=r"1 of 3 shards missing \(first shard-000001\.parquet\)"):
        list(folder.shards(job))
