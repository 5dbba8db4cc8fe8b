"""Towers: golden outputs of independent implementations, checkpoint layouts, pooling, masking."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
import torch.nn.functional as F
from PIL import Image

from train.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from train.model import DualEncoder
from train.model.bert import BertTextTower
from train.model.efficientnet import LITE_MEAN, LITE_STD, EfficientNetLite
from train.model.layers import RegionPool
from train.model.pretrained import minilm_l6_dir
from train.model.vit import VisionTransformer, resize_pos_embed


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_matches_golden(shared_dir: Path, variant: int) -> None:
    """lite0 against shared/golden; lite1 and lite2 against tests/golden, written by the upstream
    package (tools/golden_efficientnet.py) at their own resolutions."""
    folder = shared_dir / "golden" if variant == 0 else Path(__file__).parents[1] / "golden"
    golden = json.loads((folder / f"efficientnet_lite{variant}_features.json").read_text())
    size = golden.get("image_size", 224)
    images = [Image.open(shared_dir / p).convert("RGB") for p in golden["images"]]
    bicubic = Image.Resampling.BICUBIC
    sized = [im if im.size == (size, size) else im.resize((size, size), bicubic) for im in images]
    pixels = np.stack([np.asarray(im) for im in sized])  # (B, S, S, 3)
    x = torch.from_numpy(pixels).float().div(255).permute(0, 3, 1, 2)  # (B, 3, S, S)
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    tower = EfficientNetLite(size, classifier=True, variant=variant)
    tower.load_pretrained("package")
    tower.eval()
    with torch.no_grad():
        pooled, local, mask = tower(x)
        logits = tower.classify(pooled)
    want = np.array(golden["pooled_features"])
    assert np.abs(pooled.numpy() - want).max() <= 1e-3
    top5 = logits.topk(5).indices.tolist()
    assert top5 == [[c for c, _ in row] for row in golden["logits_top5"]]
    assert local.shape == (4, 16, 1280) and bool(mask.all())
    # The 16 regions average to the pooled vector only approximately (7x7 bins overlap), but their
    # mean over space must match the feature map's: check the grid pooling is really the map's.
    fmap = tower.feature_map(x)
    ref = F.adaptive_avg_pool2d(fmap, 4).flatten(2).transpose(1, 2)
    assert torch.allclose(local, ref, atol=1e-5)


def test_minilm_mean_pooling_matches_sentence_transformers(shared_dir: Path) -> None:
    golden = json.loads((shared_dir / "golden" / "minilm_l6_sentence_embeddings.json").read_text())
    directory = minilm_l6_dir()
    tower = BertTextTower.from_pretrained(directory, TextTowerConfig(pooling="mean")).eval()
    tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.enable_padding(pad_id=0)  # to the longest in the batch: padding must not matter
    enc = tok.encode_batch(golden["sentences"])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        pooled, _, _ = tower(ids, mask)
    got = F.normalize(pooled.double(), dim=-1).numpy()
    want = np.array(golden["embeddings"])
    cosine = (got * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99999, cosine


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bert_ignores_padding(pooling: str) -> None:
    torch.manual_seed(0)
    tower = BertTextTower(
        TextTowerConfig(vocab_size=100, width=32, depth=2, heads=4, intermediate=64, pooling=pooling)
    )
    tower.eval()
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    padded = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0]])
    with torch.no_grad():
        a, la, ma = tower(ids, torch.ones_like(ids))
        b, lb, mb = tower(padded, (padded != 0).long() | (torch.arange(8) == 0).long())
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(la, lb[:, :4], atol=1e-5)
    assert mb.tolist() == [[True] * 4 + [False] * 3] and ma.all()


@pytest.mark.parametrize(("in_side", "out_side"), [(7, 4), (8, 4), (14, 4), (16, 4), (4, 4), (5, 3)])
def test_region_pool_equals_adaptive_avg_pool(in_side: int, out_side: int) -> None:
    fmap = torch.randn(2, 6, in_side, in_side)
    want = F.adaptive_avg_pool2d(fmap, out_side).flatten(2).transpose(1, 2)
    got = RegionPool(in_side, out_side)(fmap.flatten(2).transpose(1, 2))
    assert torch.allclose(got, want, atol=1e-6)


def _tiny_vit(image_size: int) -> VisionTransformer:
    return VisionTransformer(image_size, patch_size=8, width=32, depth=2, heads=4)


def test_vit_loads_deit_layout_and_interpolates_positions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _tiny_vit(32).eval()
    state = dict(source.state_dict())
    state["head.weight"] = torch.zeros(1000, 32)  # a DeiT checkpoint's classifier is dropped
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "deit.pth"
    torch.save({"model": state}, path)

    same = _tiny_vit(32).eval()
    same.load_pretrained(str(path))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x)[0], source(x)[0])

    bigger = _tiny_vit(48)
    bigger.load_pretrained(str(path))
    assert bigger.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(bigger.pos_embed[:, 0], source.pos_embed[:, 0])  # [CLS] position untouched
    # Bicubic resampling of a constant grid is that constant; of a ramp, monotone along the ramp.
    ramp = torch.arange(16.0).view(1, 4, 4, 1).expand(1, 4, 4, 2).reshape(1, 16, 2)
    resized = resize_pos_embed(torch.cat([torch.zeros(1, 1, 2), ramp], dim=1), 6)[0, 1:, 0].view(6, 6)
    assert (resized.diff(dim=0) > 0).all() and (resized.diff(dim=1) > 0).all()
    const = resize_pos_embed(torch.full((1, 17, 2), 3.0), 6)
    assert torch.allclose(const, torch.full_like(const, 3.0), atol=1e-6)


def test_vit_refuses_a_checkpoint_with_missing_weights(tmp_path: Path) -> None:
    state = dict(_tiny_vit(32).state_dict())
    del state["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"blocks\.1\.mlp\.fc2\.weight"):
        _tiny_vit(32).load_pretrained(str(path))


def test_a_step_leaves_out_the_local_features_no_term_reads() -> None:
    from train.config import ObjectiveConfig
    from train.objectives import AlignmentObjective, gather_targets

    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(codebook_size=16, queue_size=8)).eval()  # eval: no dropout draws
    pixels = torch.rand(3, 3, 64, 64)
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0], [101, 4, 5, 6, 102]])
    args = (pixels, pixels.flip(-1), ids, (ids != 0).long(), torch.arange(3))
    with torch.no_grad():
        full, lean = model.step_features(*args), model.step_features(*args, locals_m=False)
    assert lean.image_locals_m is None and lean.text_locals_m is None
    assert full.image_locals_m is not None and full.image_locals_m.shape == (3, 16, 256)
    for name in ("image", "text", "image_m", "text_m"):
        assert torch.equal(getattr(full, name), getattr(lean, name)), name
    queue, tau, codes = model.queue.contents(), model.temperature(), model.codebook.vectors()
    codis = AlignmentObjective(ObjectiveConfig(preset="codis"), 0.1)
    assert not codis.needs_locals
    same = [codis(f, gather_targets(f), queue, tau, codes, 0.4).loss for f in (full, lean)]
    assert torch.equal(same[0], same[1])
    tcl = AlignmentObjective(ObjectiveConfig(preset="tcl"), 0.1)
    assert tcl.needs_locals
    with pytest.raises(ValueError, match="lmi term needs the momentum local features"):
        tcl(lean, gather_targets(lean), queue, tau, codes, 0.4)


def test_dual_encoder_outputs_are_normalised_with_masked_text_locals() -> None:
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(codebook_size=16, queue_size=8)).eval()
    image = model.encode_image(torch.rand(3, 3, 64, 64))
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 9, 102, 0, 0, 0], [101, 4, 5, 6, 7, 102]])
    text = model.encode_text(ids, (ids != 0).long())
    assert image.global_.shape == (3, 256) and image.local.shape == (3, 16, 256)
    for enc in (image, text):
        assert torch.allclose(enc.global_.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(enc.local.norm(dim=-1), torch.ones_like(enc.local[..., 0]), atol=1e-5)
    assert text.mask.tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True, True, True, True, True],
    ]
    scores = model.code_scores(image.global_)
    assert scores.shape == (3, 16) and scores.abs().max() <= 1 + 1e-5


def test_bert_concat_layers_carry_tapped_states_through_any_split() -> None:
    torch.manual_seed(0)
    cfg = TextTowerConfig(
        vocab_size=100, width=32, depth=4, heads=4, intermediate=64, dropout=0.0, pooling="mean"
    )
    plain = BertTextTower(cfg).eval()
    tapped = BertTextTower(replace(cfg, concat_layers=(1, 3))).eval()
    tapped.load_state_dict(plain.state_dict())
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 2, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        states, h = [], plain.embed(ids)
        for n in range(4):  # each layer's states, by hand
            h = plain.run_stages(h, n, n + 1, mask)
            states.append(h)
        want = plain.finish(torch.cat([states[3], states[0], states[2]], -1), mask)
        whole = tapped(ids, mask)
        for k in range(5):  # a locked prefix of k stages, then the rest: the same output
            prefix = tapped.run_stages(tapped.embed(ids), 0, k, mask)
            split = tapped.finish(tapped.run_stages(prefix, k, 4, mask), mask)
            assert torch.allclose(split[0], whole[0], atol=1e-6)
    assert tapped.width == 96 and whole[0].shape == (2, 96) and whole[1].shape == (2, 5, 96)
    for got, expected in zip(whole, want, strict=True):
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="concat_layers"):
        BertTextTower(replace(cfg, concat_layers=(4,)))


def test_mirror_average_encodes_the_image_and_its_mirror_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    image = ImageTowerConfig(
        kind="efficientnet_lite0", image_size=64, pretrained="package", mirror_average=True
    )
    model = DualEncoder(ModelConfig(image=image, codebook_size=8, queue_size=8, embed_dim=16)).eval()
    scene = Image.effect_mandelbrot((64, 64), (-2, -1.2, 1, 1.2), 60).convert("RGB")  # not symmetric
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(im)).permute(2, 0, 1) / 255.0 for im in (scene, scene.rotate(90))]
    )
    tower, head = model.online.image_tower, model.online.image_head
    x = (pixels - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        fmap = 0.5 * (tower.feature_map(x) + tower.feature_map(x.flip(-1)).flip(-1))  # (2, 1280, 2, 2)
        pooled, local, _ = tower.finish(fmap)
        got = model.encode_image(pixels)
        assert torch.allclose(got.global_, head(pooled), atol=1e-5)
        assert torch.allclose(got.local, head(local), atol=1e-5)
        model.lock(10, 0)  # the evaluator's path: a locked prefix of the pair, then the rest
        prefixed = model.encode_image(model.image_input(pixels), prefixed=True)
        assert torch.allclose(prefixed.global_, got.global_, atol=1e-5)
        model.lock(-1, 0)  # BatchNorm stays in eval mode: train mode differs only by the mirror
        model.train()
        single = model.encode_image(pixels)
        assert torch.allclose(single.global_, head(tower(x)[0]), atol=1e-5)
        assert not torch.allclose(single.global_, got.global_, atol=1e-3)
    with pytest.raises(ValueError, match="mirror_average"):
        DualEncoder(ModelConfig(image=ImageTowerConfig(mirror_average=True)))


@pytest.mark.parametrize("freeze_batchnorm", [False, True])
def test_freeze_batchnorm_keeps_running_statistics_while_the_stage_trains(freeze_batchnorm: bool) -> None:
    torch.manual_seed(0)
    image = ImageTowerConfig(kind="efficientnet_lite0", image_size=64, pretrained="package")
    model = DualEncoder(ModelConfig(image=image, codebook_size=8, queue_size=8, embed_dim=16))
    model.lock(16, -1, freeze_batchnorm=freeze_batchnorm)  # the head conv and its BatchNorm train
    model.train()
    tower = model.online.image_tower
    bn, conv = tower._bn1, tower._conv_head
    stats, weight, gamma = bn.running_mean.clone(), conv.weight.clone(), bn.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    pixels = torch.rand(4, 3, 64, 64)  # (B, 3, H, W)
    target = torch.randn(4, 16)  # (B, d): any loss that moves the unit-norm embeddings
    (model.encode_image(model.image_input(pixels), prefixed=True).global_ * target).sum().backward()
    opt.step()
    assert bn.training is not freeze_batchnorm
    assert torch.equal(bn.running_mean, stats) is freeze_batchnorm
    assert not torch.equal(conv.weight, weight) and not torch.equal(bn.weight, gamma)  # both train
    assert not tower._blocks[-1].training  # a locked stage stays in eval mode either way


def test_lock_counts_from_the_end_index_as_python_does() -> None:
    """-1 locks the whole tower, -2 all but its last stage, ...: a config can unlock the top of a
    tower whose depth only its checkpoint knows (clip-ft)."""
    from types import SimpleNamespace

    from train.model.tower import resolve_locked

    tower = SimpleNamespace(num_stages=5)
    assert [resolve_locked(tower, k) for k in (0, 3, 5, -1, -2, -3, -6)] == [0, 3, 5, 5, 4, 3, 0]  # type: ignore[arg-type]
    for bad in (6, -7):
        with pytest.raises(ValueError, match=f"cannot lock {bad} stages of a tower with 5"):
            resolve_locked(tower, bad)  # type: ignore[arg-type]
