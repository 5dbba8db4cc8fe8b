"""The command line (`python -m runtime.client`, runtime/cli.py and runtime/bulk.py) against a real
server: every command with --json, connection options after the command, errors in one line that
name the file, a routed search that scores nothing says so, and a bulk embed that resumes after
kill -9 without duplicates or gaps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT
from tests.helpers import corpus, pictures
from tests.runtime.conftest import Server


def cli(server: Server, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, --target given after the command."""
    cmd = [sys.executable, "-m", "runtime.client", *args, "--target", server.target]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def rows(out: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_every_command_answers_in_json(server: Server, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    pictures(photos / "sub", 3, first=100)
    pictures(photos, 2)
    info = rows(cli(server, "info", "--json"))[0]
    d = int(info["embed_dim"])
    embedded = rows(cli(server, "embed", "--text", "a red circle", "--image", str(photos), "--json"))
    assert len(embedded) == 6 and all(len(r["vector"]) == d for r in embedded)
    assert embedded[1]["item"] == f"image {photos / 'img0000.png'}"  # a folder: its images, sorted
    np.save(tmp_path / "q.npy", np.array([r["vector"] for r in embedded[:2]], np.float32))
    looked = rows(cli(server, "lookup", "--vector", str(tmp_path / "q.npy"), "--code", "1", "--json"))
    assert [len(r["codes"]) for r in looked[:2]] == [3, 3] and looked[2]["code"] == 1
    assert looked[0]["codes"][0][0] == embedded[0]["codes"][0][0]  # the text's vector has its codes
    assert rows(cli(server, "collections", "create", "cli_a", "--json"))[0]["created"] == "cli_a"
    indexed = rows(cli(server, "index", str(photos), "--collection", "cli_a", "--json"))[0]
    assert indexed["indexed"] == 5 and indexed["skipped"] == []
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"id": "t1", "text": "a red circle", "payload": {"k": 1}}) + "\n"
        + json.dumps({"id": "i1", "image": "photos/img0001.png"}) + "\n"
    )  # fmt: skip
    assert rows(cli(server, "index", str(items), "--collection", "cli_a", "--json"))[0]["indexed"] == 2
    listed = {r["name"]: r for r in rows(cli(server, "collections", "--json"))}
    assert listed["cli_a"]["count"] == 7
    by_text = rows(cli(server, "search", "--collection", "cli_a", "--text", "a red circle", "--json"))
    assert by_text[0]["id"] == "t1" and by_text[0]["payload"] == {"k": 1}
    by_image = rows(
        cli(server, "search", "--collection", "cli_a", "--image", str(photos / "img0001.png"), "--json")
    )
    assert {by_image[0]["id"], by_image[1]["id"]} == {"img0001.png", "i1"}  # the same picture twice
    by_vector = rows(
        cli(server, "search", "--collection", "cli_a", "--vector", str(tmp_path / "q.npy"), "--json")
    )
    assert by_vector[0]["id"] == "t1" and by_vector[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert rows(cli(server, "delete", "--collection", "cli_a", "t1", "nope", "--json"))[0]["deleted"] == 1
    assert rows(cli(server, "collections", "drop", "cli_a", "--json"))[0]["dropped"] == "cli_a"


def test_a_missing_folder_is_an_error_and_creates_nothing(server: Server, tmp_path: Path) -> None:
    out = cli(server, "index", str(tmp_path / "nowhere"), "--collection", "cli_missing", ok=False)
    assert out.returncode == 1 and f"{tmp_path / 'nowhere'}: no such folder or file" in out.stderr
    assert "Traceback" not in out.stderr
    assert "cli_missing" not in {r["name"] for r in rows(cli(server, "collections", "--json"))}


def test_a_routed_search_spends_no_probe_on_an_empty_list(server: Server, tmp_path: Path) -> None:
    codes = rows(cli(server, "lookup", "--code", "0", "--code", "1", "--json"))
    np.save(tmp_path / "c.npy", np.array([r["vector"] for r in codes], np.float32))
    cli(server, "collections", "create", "cli_routed")
    with server.client() as client:  # one record, in list 0 (a code's own vector tops that code)
        client.upsert("cli_routed", [("only", np.load(tmp_path / "c.npy")[0], None)])
    query = ("--vector", str(tmp_path / "c.npy"), "--row", "1")  # code 1's vector: its list is empty
    out = cli(server, "search", "--collection", "cli_routed", *query, "--nprobe", "1", "--json")
    assert [r["id"] for r in rows(out)] == ["only"]


def test_a_bad_file_stops_a_bulk_embed_by_name_or_is_skipped_and_listed(
    server: Server, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    pictures(photos, 5)
    (photos / "img0002.png").write_bytes(b"not a png at all")
    out = cli(server, "embed", "--from", str(photos), "--out", str(tmp_path / "v.npy"), ok=False)
    assert out.returncode == 1
    assert (
        f"{photos / 'img0002.png'}: " in out.stderr
        and "item 2 of" not in out.stderr
        and " at 0x" not in out.stderr
    )
    skipped = rows(cli(server, "embed", "--from", str(photos), "--out", str(tmp_path / "v.npy"), "--skip-bad",
                       "--batch", "2", "--json"))[0]  # fmt: skip
    assert skipped["embedded"] == 4 and [s["name"] for s in skipped["skipped"]] == [
        str(photos / "img0002.png")
    ]
    ids = (tmp_path / "v.npy.ids.txt").read_text().split()
    assert ids == ["img0000.png", "img0001.png", "img0003.png", "img0004.png"]
    assert np.load(tmp_path / "v.npy").shape[0] == 4


def test_a_bulk_embed_resumes_after_kill_9_without_duplicates_or_gaps(server: Server, tmp_path: Path) -> None:
    """5,000 captions and 1,000 images to Parquet; the first run is killed once several parts are
    written, the second finishes the job."""
    jsonl, captions = corpus(tmp_path, 5000, 1000)
    out = tmp_path / "vectors.parquet"
    cmd = [sys.executable, "-m", "runtime.client", "--target", server.target, "embed", "--from", str(jsonl),
           "--out", str(out), "--part-items", "200"]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "vectors.parquet.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.npz"))) < 6:
        assert first.poll() is None, "the first run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written = len(list(parts.glob("part-*.npz")))
    assert not out.exists() and 6 <= written < 30
    second = subprocess.run([*cmd, "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["embedded"] == 6000 and not parts.exists()
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert ids == [f"t{i}" for i in range(5000)] + [f"i{i}" for i in range(1000)]  # no duplicate, no gap
    vectors = np.asarray(table.column("vector").to_pylist(), np.float32)  # (6000, d)
    sample = [0, 1999, 4999, 5000, 5999]
    with server.client() as client:
        items = [captions[i] if i < 5000 else tmp_path / "img" / f"img{i - 5000:04d}.png" for i in sample]
        want = np.concatenate([client.embed_texts([x]) if isinstance(x, str) else client.embed_images([x])
                               for x in items])  # fmt: skip
    np.testing.assert_allclose(vectors[sample], want, atol=1e-5)
