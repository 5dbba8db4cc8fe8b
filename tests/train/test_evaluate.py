"""Retrieval recall against a plain loop implementation of the multi-caption protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.evaluate import recall_at_k, zero_shot_accuracy


def loop_recalls(sim: list[list[float]], owner: list[int]) -> dict[str, float]:
    n_img, n_cap = len(sim), len(sim[0])
    out = {}
    for k in (1, 5, 10):
        hits = 0
        for i in range(n_img):
            top = sorted(range(n_cap), key=lambda j: -sim[i][j])[:k]
            hits += any(owner[j] == i for j in top)
        out[f"i2t_r{k}"] = 100.0 * hits / n_img
    for k in (1, 5, 10):
        hits = 0
        for j in range(n_cap):
            top = sorted(range(n_img), key=lambda i: -sim[i][j])[:k]
            hits += owner[j] in top
        out[f"t2i_r{k}"] = 100.0 * hits / n_cap
    out["rsum"] = sum(out.values())
    return out


def test_recall_matches_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    n_img = 30
    owner = torch.arange(n_img).repeat_interleave(3)[:80]  # up to 3 captions per image, some with fewer
    img = torch.randn(n_img, 8, generator=gen)
    cap = img[owner] + 1.5 * torch.randn(len(owner), 8, generator=gen)  # noisy: partial recall
    sim = img @ cap.T
    got = recall_at_k(sim, owner)
    want = loop_recalls(sim.tolist(), owner.tolist())
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-4, key
    assert 0 < got["t2i_r1"] < 100


def test_zero_shot_accuracy() -> None:
    classes = torch.eye(3)
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.7, 0.0]])
    assert abs(zero_shot_accuracy(images, torch.tensor([0, 2, 0]), classes) - 200 / 3) < 1e-4


def test_evaluator_with_locked_prefixes_equals_the_full_forward() -> None:
    from dataclasses import replace

    from tests.train.tiny import TINY
    from train.config import DataConfig
    from train.data.datasets import make_source
    from train.data.tokenizer import TextEncoder, train_tokenizer
    from train.evaluate import RetrievalEvaluator
    from train.model import DualEncoder

    source = make_source(DataConfig(source="shapes", shapes_val_images=12, shapes_captions=2), "dev", 32)
    rset = source.retrieval_set()
    text = TextEncoder(train_tokenizer(rset.captions, 64), 40)
    torch.manual_seed(0)
    model = DualEncoder(replace(TINY, text=replace(TINY.text, vocab_size=text.vocab_size))).eval()
    full, full_emb = RetrievalEvaluator(rset, source.loader, text, torch.device("cpu"))(model)
    model.lock(image_stages=1, text_stages=1)  # the whole (1-stage) towers
    locked, locked_emb = RetrievalEvaluator(rset, source.loader, text, torch.device("cpu"))(model)
    assert torch.allclose(full_emb.images, locked_emb.images, atol=1e-6)
    assert torch.allclose(full_emb.captions, locked_emb.captions, atol=1e-6)
    assert full == locked


def test_evaluator_of_a_training_mirror_averaged_model_sees_the_eval_mode_encoder() -> None:
    from dataclasses import replace

    from tests.train.tiny import TINY
    from train.config import DataConfig, ImageTowerConfig
    from train.data.augment import eval_view, to_tensor
    from train.data.datasets import make_source
    from train.data.tokenizer import TextEncoder, train_tokenizer
    from train.evaluate import RetrievalEvaluator
    from train.model import DualEncoder

    source = make_source(DataConfig(source="shapes", shapes_val_images=6, shapes_captions=2), "dev", 64)
    rset = source.retrieval_set()
    text = TextEncoder(train_tokenizer(rset.captions, 64), 40)
    image = ImageTowerConfig(
        kind="efficientnet_lite0", image_size=64, pretrained="package", mirror_average=True
    )
    torch.manual_seed(0)
    model = DualEncoder(replace(TINY, image=image, text=replace(TINY.text, vocab_size=text.vocab_size)))
    model.lock(image_stages=-1, text_stages=0)
    model.train()  # as the loop calls it: mid-training, the prefixes are prepared on the first call
    _, got = RetrievalEvaluator(rset, source.loader, text, torch.device("cpu"))(model)
    assert model.training
    pixels = torch.stack([to_tensor(eval_view(source.loader(r), 64)) for r in rset.images])
    with torch.no_grad():
        want = model.eval().encode_image(pixels).global_
    assert got.images.shape == want.shape and torch.allclose(got.images, want, atol=1e-5)


@pytest.mark.integration  # trains two small runs and evaluates them in processes of their own
def _captioned_pictures(tmp_path: Path) -> list[str]:
    """40 shape scenes as PNG files with captions (32 train, 8 dev) and a held-out list of 8 of the
    training images; returns the data overrides that read them."""
    import json

    import numpy as np
    from PIL import Image

    from train.data.shapes import captions as shape_captions
    from train.data.shapes import render, scene

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(40):
        shapes = scene(9, "heldout", i)
        Image.fromarray(np.asarray(render(shapes, 32), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append({"image": f"{i}.png", "captions": shape_captions(shapes, 2, f"c/{i}"),
                     "split": "train" if i < 32 else "dev"})  # fmt: skip
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "held.txt").write_text("".join(f"{i}.png\n" for i in range(24, 32)))
    return [f"data.jsonl={tmp_path / 'captions.jsonl'}", "data.source=jsonl", "data.augment=light"]


def test_a_cached_runs_test_split_inputs_are_stored_once_and_give_the_same_recalls(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from tests.helpers import small
    from train.checkpoint import load_model
    from train.data.datasets import InputPolicy, make_source
    from train.data.tokenizer import text_encoder
    from train.evaluate import RetrievalEvaluator, evaluate_checkpoint
    from train.loop import train

    locked = ["model.image.depth=2", "model.text.depth=2", "lock.image_stages=1", "lock.text_stages=1"]
    cache = [*locked, "lock.cache=true", f"lock.cache_dir='{tmp_path / 'cache'}'"]
    data = _captioned_pictures(tmp_path)
    train(
        small(*data, *cache, f"data.held_out={tmp_path / 'held.txt'}", "optim.max_steps=2"), tmp_path / "run"
    )
    checkpoint = str(tmp_path / "run" / "best.pt")
    first = evaluate_checkpoint(checkpoint, "test")
    stored = sorted((tmp_path / "cache").glob("*-eval.pt"))
    assert len(stored) == 2  # dev (during training) and test
    assert evaluate_checkpoint(checkpoint, "test") == first  # read back
    assert sorted((tmp_path / "cache").glob("*-eval.pt")) == stored
    model, ckpt = load_model(checkpoint, "cpu")  # the reference: whole towers, nothing stored
    cfg = ckpt["config"]
    source = make_source(cfg.data, "test", cfg.model.image.image_size, InputPolicy.of(cfg.model))
    text = text_encoder(cfg.model, Tokenizer.from_str(ckpt["tokenizer"]))
    whole, _ = RetrievalEvaluator(source.retrieval_set(0), source.loader, text, torch.device("cpu"))(model)
    assert whole == pytest.approx(first, abs=1e-9)


def test_eval_only_reports_a_held_out_split_and_refuses_one_the_run_trained_on(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT
    from tests.helpers import small
    from train.loop import train

    data = _captioned_pictures(tmp_path)
    held = f"data.held_out={tmp_path / 'held.txt'}"
    train(small(*data, held, "optim.max_steps=2"), tmp_path / "held")
    train(small(*data, "optim.max_steps=2"), tmp_path / "all")
    train(small(*data, held, "data.train_split=train+dev", "optim.max_steps=2"), tmp_path / "refit")

    def eval_only(run: str, split: str = "test", name: str = "best.pt") -> subprocess.CompletedProcess[str]:
        checkpoint = str(tmp_path / run / name)
        cmd = [sys.executable, "-m", "train", "--eval-only", checkpoint, "--split", split]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    ok = eval_only("held")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["split"] == "test" and 0 <= report["rsum"] <= 600
    refused = eval_only("all")
    assert refused.returncode == 2 and "was trained without data.held_out" in refused.stderr
    on_train = eval_only("held", "train")
    assert on_train.returncode == 2 and "was trained on the 'train' split" in on_train.stderr
    # a refit trains on dev too: dev chose nothing there, so no best.pt; its test split is still unseen
    assert not (tmp_path / "refit" / "best.pt").exists()
    assert eval_only("refit", name="last.pt").returncode == 0
    on_dev = eval_only("refit", "dev", "last.pt")
    assert on_dev.returncode == 2 and "was trained on the 'dev' split" in on_dev.stderr
