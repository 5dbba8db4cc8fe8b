"""CLIP-family towers (train/model/clip.py) against Hugging Face `transformers` on random weights
(no pretrained CLIP or SigLIP weights can be had here): a checkpoint directory written by
`save_pretrained` loads by name, and our image and text embeddings and logits equal the reference's
within 1e-5 for several image sizes, patch sizes and text lengths, padded rows included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import clip_tokenizer
from train.model.clip import from_state_dict, load_hf, logits, open_clip_to_hf
from train.model.layers import l2_normalize

transformers = pytest.importorskip("transformers", reason="the reference implementation (the dev extra)")

TOL = 1e-5


def clip_checkpoint(
    folder: Path, image_size: int, patch_size: int, eos_id: int, text_width: int = 32
) -> Path:
    text = {"vocab_size": 99, "hidden_size": text_width, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 24, "eos_token_id": eos_id,
            "pad_token_id": 1, "bos_token_id": 0}  # fmt: skip
    vision = {"hidden_size": 40, "intermediate_size": 56, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": image_size, "patch_size": patch_size}  # fmt: skip
    torch.manual_seed(image_size + eos_id)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # the reference's init leaves some parameters at 0 or 1: make every one count
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def siglip_checkpoint(folder: Path, image_size: int, patch_size: int) -> Path:
    text = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 16, "projection_size": 32}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 56, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": image_size, "patch_size": patch_size}  # fmt: skip
    torch.manual_seed(image_size)
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def clip_texts(lengths: list[int], max_len: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows: BOS, random tokens, EOS; pad 1 after (as CLIP's tokenizer makes them)."""
    g = torch.Generator().manual_seed(sum(lengths))
    ids = torch.ones(len(lengths), max_len, dtype=torch.long)
    mask = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = 0
        body = torch.randint(3, 98, (n - 2,), generator=g)
        ids[row, 1 : n - 1] = body.masked_fill(body == eos_id, eos_id + 1)  # one end-of-text per row
        ids[row, n - 1] = eos_id if eos_id != 2 else 98  # legacy configs pool at the highest id
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize(("image_size", "patch_size", "eos_id"), [(32, 8, 49), (48, 16, 2), (40, 4, 49)])
def test_clip_equals_transformers(tmp_path: Path, image_size: int, patch_size: int, eos_id: int) -> None:
    path = clip_checkpoint(tmp_path / "clip", image_size, patch_size, eos_id)
    reference = transformers.CLIPModel.from_pretrained(path).eval()
    image_tower, text_tower, heads, shapes = load_hf(path)
    pixels = torch.randn(3, 3, image_size, image_size)  # (B, 3, H, W), already normalised
    for length in (24, 11):  # the longest row at the full length, or shorter; the others padded
        ids, mask = clip_texts([length, max(3, length // 2), 3], length, eos_id)
        with torch.no_grad():
            want = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels)
            pooled, _, _ = image_tower.finish(image_tower.run_stages(image_tower.embed(pixels), 0, 2))
            image = l2_normalize(heads.image(pooled))  # (3, d)
            h = text_tower.run_stages(text_tower.embed(ids), 0, 2, mask)
            pooled_text, _, _ = text_tower.finish(h, mask)
            text = l2_normalize(heads.text(pooled_text))  # (3, d)
        assert shapes.family == "clip" and image.shape == (3, 24)
        assert (image - want.image_embeds).abs().max() <= TOL
        assert (text - want.text_embeds).abs().max() <= TOL
        assert (logits(image, text, heads) - want.logits_per_text).abs().max() <= TOL * 10  # scale 1/0.07


@pytest.mark.parametrize(("image_size", "patch_size"), [(32, 8), (48, 16)])
def test_siglip_equals_transformers(tmp_path: Path, image_size: int, patch_size: int) -> None:
    path = siglip_checkpoint(tmp_path / "siglip", image_size, patch_size)
    reference = transformers.SiglipModel.from_pretrained(path).eval()
    image_tower, text_tower, heads, shapes = load_hf(path)
    pixels = torch.randn(2, 3, image_size, image_size)
    g = torch.Generator().manual_seed(image_size)
    ids = torch.randint(2, 99, (2, 16), generator=g)
    ids[1, 9:] = 1  # a short text padded to the full length, as SigLIP was trained
    for mask in (None, (ids != 1).long()):  # as trained (no mask), and with a padding mask
        with torch.no_grad():
            want = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels)
            pooled, _, _ = image_tower.finish(image_tower.run_stages(image_tower.embed(pixels), 0, 2))
            image = l2_normalize(pooled)  # SigLIP's vision head pools to the joint space itself
            h = text_tower.run_stages(text_tower.embed(ids), 0, 2, mask)
            pooled_text, _, _ = text_tower.finish(h, mask)
            text = l2_normalize(heads.text(pooled_text))
        assert shapes.family == "siglip" and heads.image is None
        assert (image - want.image_embeds).abs().max() <= TOL
        assert (text - want.text_embeds).abs().max() <= TOL
        assert (logits(image, text, heads) - want.logits_per_text).abs().max() <= TOL * 10


def test_locking_stages_keeps_the_outputs(tmp_path: Path) -> None:
    """Stages run in pieces equal the whole run: what locking a prefix relies on."""
    _, text_tower, _, _ = load_hf(clip_checkpoint(tmp_path / "clip", 32, 8, 49))
    ids, mask = clip_texts([12, 6], 12, 49)
    with torch.no_grad():
        whole = text_tower.run_stages(text_tower.embed(ids), 0, 2, mask)
        split = text_tower.run_stages(text_tower.run_stages(text_tower.embed(ids), 0, 1, mask), 1, 2, mask)
    assert torch.equal(whole, split) and len(text_tower.stage_groups()) == 4


BLOCK_NAMES = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
               ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))  # fmt: skip
NORM_NAMES = (("visual.ln_pre", "vision_model.pre_layrnorm"),
              ("visual.ln_post", "vision_model.post_layernorm"),
              ("ln_final", "text_model.final_layer_norm"))  # fmt: skip


def open_clip_layout(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIPModel state dict in open_clip's names and shapes (open_clip itself cannot
    be imported beside torch 2.13.0 CPU: it needs torchvision), written out from open_clip's
    layout: fused in_proj, c_fc/c_proj, ln_pre/ln_post/ln_final, (W, d) projections."""
    out = {"logit_scale": hf["logit_scale"], "visual.proj": hf["visual_projection.weight"].T,
           "text_projection": hf["text_projection.weight"].T}  # fmt: skip
    for theirs, ours in (("vision_model.", "visual."), ("text_model.", "")):
        depth = len({k.split(".")[3] for k in hf if k.startswith(f"{theirs}encoder.layers.")})
        for i in range(depth):
            a, b = f"{theirs}encoder.layers.{i}.", f"{ours}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{b}attn.in_proj_{kind}"] = torch.cat(
                    [hf[f"{a}self_attn.{x}_proj.{kind}"] for x in "qkv"]
                )
                for x, y in BLOCK_NAMES:
                    out[f"{b}{x}.{kind}"] = hf[f"{a}{y}.{kind}"]
    for x, y in NORM_NAMES:
        out[f"{x}.weight"], out[f"{x}.bias"] = hf[f"{y}.weight"], hf[f"{y}.bias"]
    out["visual.class_embedding"] = hf["vision_model.embeddings.class_embedding"]
    out["visual.conv1.weight"] = hf["vision_model.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = hf["vision_model.embeddings.position_embedding.weight"]
    out["token_embedding.weight"] = hf["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = hf["text_model.embeddings.position_embedding.weight"]
    return {f"module.{k}": v.clone() for k, v in out.items()}  # as a DDP-trained checkpoint saves them


def test_an_open_clip_checkpoint_loads_and_equals_the_reference(tmp_path: Path) -> None:
    path = clip_checkpoint(tmp_path / "clip", 32, 8, 2, text_width=40)  # 4 heads of 10 in both towers
    reference = transformers.CLIPModel.from_pretrained(path).eval()
    torch.save(open_clip_layout(reference.state_dict()), tmp_path / "open_clip.pt")
    shapes, state = open_clip_to_hf(torch.load(tmp_path / "open_clip.pt"), act="quick_gelu", head_width=10)
    image_tower, text_tower, heads = from_state_dict(shapes, state)
    assert (shapes.image_size, shapes.patch_size, shapes.vision.heads, shapes.text.heads) == (32, 8, 4, 4)
    pixels = torch.randn(2, 3, 32, 32)
    ids, mask = clip_texts([24, 7], 24, 2)
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        pooled, _, _ = image_tower.finish(image_tower.run_stages(image_tower.embed(pixels), 0, 2))
        pooled_text, _, _ = text_tower.finish(text_tower.run_stages(text_tower.embed(ids), 0, 2, mask), mask)
        image, text = l2_normalize(heads.image(pooled)), l2_normalize(heads.text(pooled_text))
    assert (image - want.image_embeds).abs().max() <= TOL
    assert (text - want.text_embeds).abs().max() <= TOL
    assert (logits(image, text, heads) - want.logits_per_text).abs().max() <= TOL * 10


def test_clip_text_is_tokenised_as_the_reference_does(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from train.data.tokenizer import TextEncoder

    folder = clip_tokenizer(tmp_path / "tok")
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["The dog on the cat!", "a  DOG,   a cat… café 42", "the " * 30, ""]
    for max_len in (8, 77):
        want = reference(texts, truncation=True, max_length=max_len, padding="longest", return_tensors="pt")
        ours = TextEncoder(Tokenizer.from_file(str(folder / "tokenizer.json")), max_len,
                           pad_id=reference.pad_token_id)  # fmt: skip
        ids, mask = ours.encode(texts)
        assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
        assert all(row[m.sum() - 1] == reference.eos_token_id for row, m in zip(ids, mask, strict=True))


def test_siglip_text_is_tokenised_as_the_reference_does(tmp_path: Path) -> None:
    """A SigLIP checkpoint ships spiece.model only; our tokenizer.json rebuilt from it gives
    transformers' SiglipTokenizer's ids (its punctuation removal, lowercasing, sentencepiece
    normaliser, end-of-text), padded to the full length as SigLIP is run."""
    from tests.helpers import siglip_tokenizer
    from train.data.tokenizer import TextEncoder, checkpoint_tokenizer

    siglip_tokenizer(tmp_path / "tok")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert type(reference).__name__ == "SiglipTokenizer"
    texts = ["The dog on the cat!", "  a  DOG,\ta cat… café 42  ", "Über-naïve résumé ①", "the " * 30, "?!"]
    texts.append("")
    for max_len in (8, 64):
        want = reference(texts, truncation=True, max_length=max_len, padding="max_length",
                         return_tensors="pt")  # fmt: skip
        ours = TextEncoder(checkpoint_tokenizer(tmp_path / "tok"), max_len, reference.pad_token_id, True)
        ids, mask = ours.encode(texts)
        assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_model_init_starts_the_dual_encoder_at_the_checkpoint(tmp_path: Path, family: str) -> None:
    """`model.init`: towers, projections (SigLIP's identity image head) and temperature from the
    checkpoint; texts padded as the family needs (SigLIP: to the full length)."""
    from tests.helpers import random_clip, small
    from train.data.tokenizer import checkpoint_tokenizer, text_encoder
    from train.model import DualEncoder
    from train.model.dual import resolve_config

    path = random_clip(tmp_path / family, family)
    reference = (transformers.CLIPModel if family == "clip" else transformers.SiglipModel).from_pretrained(
        path
    )
    cfg = resolve_config(small(f"model.init={path}").model)
    model = DualEncoder(cfg).eval()
    ids, mask = text_encoder(cfg, checkpoint_tokenizer(path)).encode(["the dog", "a cat on"])
    assert (ids.shape[1] == cfg.text.max_len) == (family == "siglip")
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(cfg.image.mean).view(1, 3, 1, 1), torch.tensor(cfg.image.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = reference.eval()(input_ids=ids, attention_mask=mask, pixel_values=(pixels - mean) / std)
        image, text = model.encode_image(pixels).global_, model.encode_text(ids, mask).global_
    assert (image - want.image_embeds).abs().max() <= TOL and (text - want.text_embeds).abs().max() <= TOL
    scale_temp = math.exp(-float(reference.logit_scale))  # within the configured range
    assert abs(float(model.temp) - min(max(scale_temp, cfg.temp_min), cfg.temp_max)) <= 1e-6
