"""Data: the JSONL format, caption clean-up, shapes, seeded views, resumable sharded batches,
tokenisation, and corrupt images skipped by name."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from train.config import DataConfig
from train.data.augment import make_view
from train.data.captions import clean_caption, load_jsonl, retrieval_set
from train.data.datasets import Collate, EpochBatches, PairDataset, make_source
from train.data.shapes import CELLS, captions, scene
from train.data.tokenizer import TextEncoder, train_tokenizer


def test_clean_caption_follows_tcl() -> None:
    assert clean_caption("A dog's toy -- on the grass/field!!  ", 30) == "a dogs toy on the grass field"
    assert clean_caption("One two three four", 2) == "one two"


def write_jsonl(tmp_path: Path, rows: list[dict], images: dict[str, Image.Image | bytes]) -> Path:
    (tmp_path / "images").mkdir()
    for name, content in images.items():
        if isinstance(content, bytes):
            (tmp_path / "images" / name).write_bytes(content)
        else:
            content.save(tmp_path / "images" / name)
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_formats_and_splits(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"image": "a.png", "caption": "A red ball.", "split": "train"},
            {"image": "b.png", "captions": ["Two dogs", "dogs, playing"], "split": "train"},
            {"image": "c.png", "captions": ["a cat"], "split": "dev"},
        ],
        {},
    )
    train = load_jsonl(path, "train", 30)
    assert [(i.image, i.captions) for i in train] == [
        ("a.png", ("a red ball",)),
        ("b.png", ("two dogs", "dogs playing")),
    ]
    rset = retrieval_set(train)
    assert rset.captions == ["a red ball", "two dogs", "dogs playing"] and rset.caption_image == [0, 1, 1]
    assert [i.image for i in load_jsonl(path, "dev", 30)] == ["c.png"]
    raw = load_jsonl(path, "train", 1, clean=False)  # a CLIP-family model's captions: as written
    assert [i.captions for i in raw] == [("A red ball.",), ("Two dogs", "dogs, playing")]
    path.write_text('{"image": "a.png"}\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:1: not an image-caption record"):
        load_jsonl(path, None, 30)


def test_corrupt_image_is_skipped_with_its_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = Image.new("RGB", (40, 40), (200, 10, 10))
    path = write_jsonl(
        tmp_path,
        [{"image": "bad.jpg", "caption": "broken"}, {"image": "good.png", "caption": "a red square"}],
        {"bad.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg", "good.png": good},
    )
    source = make_source(DataConfig(source="jsonl", jsonl=str(path), train_split="train"), "train", 32)
    dataset = PairDataset(source, "none", 32)
    with caplog.at_level(logging.WARNING):
        pair = dataset[(0, 0, 0)]  # asks for the broken one, gets the next readable pair
    assert pair.caption == "a red square" and pair.image_id == 1
    assert "bad.jpg" in caplog.text


def test_shapes_are_deterministic_and_captions_state_every_attribute() -> None:
    a, b = scene(3, "train", 17), scene(3, "train", 17)
    assert a == b
    assert any(scene(3, "dev", i) != scene(3, "train", i) for i in range(5))  # splits differ
    for caption in captions(a, 3, "seed"):
        for shape in a:
            for word in (shape.kind, shape.colour, shape.size, CELLS[shape.cell].split()[-1]):
                assert word in caption
    source = make_source(DataConfig(source="shapes", shapes_train_images=50), "train", 32)
    assert len(source.items) == 50 and len(source.pairs) == 100
    assert source.image(5).size == (32, 32)


@pytest.mark.parametrize("kind", ["tcl", "light", "none"])
def test_views_are_a_function_of_the_seed(kind: str) -> None:
    img = Image.effect_mandelbrot((96, 80), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    v1 = make_view(kind, img, 48, random.Random("s/0/1"))
    v2 = make_view(kind, img, 48, random.Random("s/0/1"))
    v3 = make_view(kind, img, 48, random.Random("s/0/2"))
    assert v1.shape == (3, 48, 48) and v1.min() >= 0.0 and v1.max() <= 1.0
    assert torch.equal(v1, v2)
    assert kind == "none" or not torch.equal(v1, v3)


def test_mirror_views_are_the_eval_view_or_its_mirror_and_a_cache_holds_both() -> None:
    img = Image.effect_mandelbrot((96, 80), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    plain = make_view("none", img, 48, random.Random(0))
    drawn = [make_view("mirror", img, 48, random.Random(f"s/{k}")) for k in range(20)]
    assert all(torch.equal(v, plain) or torch.equal(v, plain.flip(-1)) for v in drawn)
    assert 0 < sum(torch.equal(v, plain) for v in drawn) < 20
    cached = [make_view("mirror", img, 48, random.Random(0), index=v) for v in range(2)]
    assert torch.equal(cached[0], plain) and torch.equal(cached[1], plain.flip(-1))


def test_epoch_batches_shard_the_global_batch_and_resume_mid_epoch() -> None:
    n, batch, world = 50, 4, 2
    ranks = [list(EpochBatches(n, batch, epoch=3, seed=7, rank=r, world=world)) for r in range(world)]
    assert len(ranks[0]) == EpochBatches.per_epoch(n, batch, world) == 6
    seen = [k[0] for r in ranks for b in r for k in b]
    assert len(seen) == len(set(seen)) == 48  # disjoint shards, last partial batch dropped
    single = list(EpochBatches(n, batch * world, epoch=3, seed=7))
    for b in range(6):  # the same global batches as one process with the whole batch
        assert [k[0] for k in ranks[0][b] + ranks[1][b]] == [k[0] for k in single[b]]
    resumed = list(EpochBatches(n, batch, epoch=3, seed=7, rank=1, world=world, start=4))
    assert resumed == ranks[1][4:]
    assert list(EpochBatches(n, batch, epoch=4, seed=7)) != list(EpochBatches(n, batch, epoch=3, seed=7))


def test_text_is_padded_to_the_batch_longest_and_truncated() -> None:
    tok = train_tokenizer(["a red circle", "a blue square at the top left"] * 20, 100)
    text = TextEncoder(tok, max_len=5)
    ids, mask = text.encode(["a red circle", "a"])
    assert ids.shape == (2, 5) and mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert ids[0, 0] == tok.token_to_id("[CLS]") and ids[1, 2] == tok.token_to_id("[SEP]")
    source = make_source(DataConfig(source="shapes", shapes_train_images=8), "train", 32)
    pairs = [PairDataset(source, "light", 32)[(i, 0, 0)] for i in range(3)]
    batch = Collate(TextEncoder(tok, 64))(pairs)
    assert batch.view1.shape == (3, 3, 32, 32) and batch.input_ids.shape[1] == int(
        batch.attention_mask.sum(1).max()
    )


def test_held_out_images_leave_their_split_for_the_test_split(tmp_path: Path) -> None:
    from train.data.captions import read_held_out

    splits = ["train"] * 6 + ["dev"] * 2
    rows = [{"image": f"{i}.png", "caption": f"pic {i}", "split": s} for i, s in enumerate(splits)]
    path = write_jsonl(tmp_path, rows, {})
    listed = tmp_path / "held.txt"
    listed.write_text("# two training images\n1.png\n4.png\n")
    held = read_held_out(listed)
    assert held == {"1.png", "4.png"}
    assert [i.image for i in load_jsonl(path, "train", 30, held)] == ["0.png", "2.png", "3.png", "5.png"]
    assert [i.image for i in load_jsonl(path, "test", 30, held)] == ["1.png", "4.png"]
    assert [i.image for i in load_jsonl(path, "dev", 30, held)] == ["6.png", "7.png"]
    refit = load_jsonl(path, "train+dev", 30, held)  # a refit: training and dev images, never test
    assert [i.image for i in refit] == ["0.png", "2.png", "3.png", "5.png", "6.png", "7.png"]


def test_the_shipped_flickr8k_test_split_is_1000_training_images_and_the_configs_hold_it_out(
    shared_dir: Path,
) -> None:
    import json

    from train.config import load_train_config
    from train.data.captions import read_held_out

    lines = (shared_dir / "data" / "flickr8k" / "captions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    train_images = {r["image"] for r in rows if r["split"] == "train"}
    held = read_held_out("train/splits/flickr8k-test.txt")
    assert len(held) == 1000 and held <= train_images
    for name in ("flickr8k", "flickr8k-locked", "flickr8k-ft"):
        assert load_train_config(name, []).data.held_out == "train/splits/flickr8k-test.txt", name


def test_the_image_cache_key_changes_with_the_images_of_the_training_split() -> None:
    from train.cache import cache_keys
    from train.config import load_train_config

    base = load_train_config("flickr8k-locked", [])
    other = load_train_config("flickr8k-locked", ["data.held_out=another-list.txt"])
    optimiser = load_train_config("flickr8k-locked", ["optim.lr=1e-4"])
    assert cache_keys(base, "{}")[0] != cache_keys(other, "{}")[0]  # other images: other views
    assert cache_keys(base, "{}")[0] == cache_keys(optimiser, "{}")[0]  # shared where nothing differs


def test_seeds_share_cached_views_unless_the_views_are_drawn() -> None:
    from train.cache import cache_keys
    from train.config import load_train_config

    def key(*overrides: str) -> str:
        return cache_keys(load_train_config("flickr8k-locked", list(overrides)), "{}")[0]

    assert key("run.seed=0") == key("run.seed=1")  # "mirror": view v is the image or its mirror
    assert key("data.augment='tcl'", "run.seed=0") != key("data.augment='tcl'", "run.seed=1")
