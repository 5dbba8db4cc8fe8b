"""Retrieval recall against a plain loop implementation of the multi-caption protocol."""

from __future__ import annotations

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
