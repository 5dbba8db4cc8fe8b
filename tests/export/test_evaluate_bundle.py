"""`python -m export.evaluate`: a bundle's recalls on its run's held-out split as a user reaches it
(image files and raw captions through a real server) equal the trainer's own evaluation of the
checkpoint on that split; a bundle whose run held nothing out is refused for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.evaluate import main as evaluate_bundle
from export.pipeline import Exporter, ExportOptions
from tests.helpers import small
from train.data.shapes import render, scene, shapes_split
from train.evaluate import evaluate_checkpoint
from train.loop import train

pytestmark = pytest.mark.integration


def shapes_jsonl(folder: Path) -> tuple[Path, Path]:
    """folder/captions.jsonl of shapes pictures (train, dev), images as PNG and JPEG files, and a
    held-out list of 12 of the training images."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for split, n in (("train", 64), ("dev", 16)):
        for i, captions in shapes_split(0, split, n, 2):
            name = f"{split}{i}.{'jpg' if i % 3 == 0 else 'png'}"
            render(scene(0, split, i), 48).save(folder / "images" / name)
            caps = [captions[0].capitalize() + ".", captions[1] + "!"]  # raw: the server cleans them
            rows.append({"image": name, "captions": caps, "split": split})
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    held_out = folder / "test.txt"
    names = [f"train{i}.{'jpg' if i % 3 == 0 else 'png'}" for i in range(0, 48, 4)]
    held_out.write_text("\n".join(names) + "\n")
    return folder / "captions.jsonl", held_out


def test_served_recalls_on_the_held_out_split_equal_the_trainers(tmp_path: Path, capsys) -> None:
    jsonl, held_out = shapes_jsonl(tmp_path / "data")
    data = ["data.source=jsonl", f"data.jsonl={jsonl}", f"data.held_out={held_out}", "data.tokenizer=train"]
    run = tmp_path / "run"
    train(small(*data), run)
    bundle = tmp_path / "bundle"
    Exporter(ExportOptions(run / "best.pt", bundle, max_batch=8), lambda _: None).run()
    want = evaluate_checkpoint(str(run / "best.pt"), "test")
    assert evaluate_bundle([str(bundle), "--split", "test"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == 12 and got["captions"] == 24
    for key, value in want.items():
        assert abs(got[key] - value) <= 0.01, (key, got[key], value)  # the printout's rounding

    # a run that held nothing out: its "test" images are training images
    plain = tmp_path / "plain"
    train(small(*data[:2], "data.tokenizer=train"), plain)
    Exporter(ExportOptions(plain / "best.pt", tmp_path / "plain-bundle", max_batch=8), lambda _: None).run()
    assert evaluate_bundle([str(tmp_path / "plain-bundle"), "--split", "test"]) == 2
    assert "trained without data.held_out" in capsys.readouterr().err
