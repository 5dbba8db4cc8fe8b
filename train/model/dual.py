"""The dual encoder: online towers and heads, their momentum twin, codebook, temperature and queue.

Map:
- `Encoded`: one modality's output — global embedding (B, d), locals (B, N, d), locals mask (B, N).
- `Towers`: image tower + text tower + their projection heads (what has a momentum twin).
- `DualEncoder`: `encode_image` / `encode_text` (online or momentum), `code_scores`,
  `step_features` (everything the objectives need for one step), `update_momentum`, `temperature`.

Images enter as RGB floats in [0, 1], NCHW; the model applies its own mean/std (which the export
bakes into the ONNX graph). Texts enter as token ids and attention mask (B, L).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from train.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from train.model import clip
from train.model.bert import BertTextTower
from train.model.efficientnet import LITE_MEAN, LITE_STD, EfficientNetLite
from train.model.heads import Codebook, ProjectionHead
from train.model.momentum import ema_update, momentum_copy
from train.model.pretrained import resolve_text_dir
from train.model.queue import PairQueue
from train.model.tower import freeze, resolve_locked
from train.model.vit import VisionTransformer
from train.objectives.features import StepFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNETS = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}  # kind -> variant


@dataclass
class Encoded:
    global_: torch.Tensor  # (B, d), L2-normalised
    local: torch.Tensor | None  # (B, N, d), L2-normalised; None when not asked for
    mask: torch.Tensor | None  # (B, N) bool


def resolve_config(cfg: ModelConfig, read_pretrained: bool = True) -> ModelConfig:
    """Fills what the towers imply: a CLIP-family checkpoint's shapes (`model.init`), pixel
    statistics, and (when `read_pretrained`) a pretrained BERT's shapes from its config.json.
    Checkpoints store the resolved config."""
    if cfg.init and not cfg.clip_config:
        if not read_pretrained:
            raise ValueError("model.init is set but its config was never resolved (clip_config is empty)")
        cfg = replace(cfg, clip_config=clip.read_config_text(cfg.init))
    if cfg.clip_config:
        return clip_config(cfg, read_pretrained)
    image = cfg.image
    if image.mean is None or image.std is None:
        lite = image.kind in EFFICIENTNETS
        image = replace(
            image,
            mean=image.mean or (LITE_MEAN if lite else IMAGENET_MEAN),
            std=image.std or (LITE_STD if lite else IMAGENET_STD),
        )
    text = cfg.text
    if text.pretrained and read_pretrained:
        from train.model.bert import hf_to_config

        hf = json.loads((resolve_text_dir(text.pretrained) / "config.json").read_text())
        text = hf_to_config(hf, text)
    return replace(cfg, image=image, text=text)


def clip_config(cfg: ModelConfig, read_pretrained: bool) -> ModelConfig:
    """The shapes a CLIP-family checkpoint dictates, written into the image/text configs (what
    export and the int8 calibration read), with its pixel statistics."""
    shapes = clip.shapes_from_hf(json.loads(cfg.clip_config))
    if cfg.image.mirror_average:
        raise ValueError(f"image.mirror_average needs a convolutional tower, not {shapes.family!r}")
    v, t = shapes.vision, shapes.text
    mean, std = cfg.image.mean, cfg.image.std
    if mean is None or std is None:
        mean, std = clip.pixel_statistics(cfg.init if read_pretrained else "", shapes.family)
    image = replace(
        cfg.image, kind=shapes.family, image_size=shapes.image_size, patch_size=shapes.patch_size,
        width=v.width, depth=v.depth, heads=v.heads, mlp_ratio=v.mlp / v.width, mean=mean, std=std,
    )  # fmt: skip
    text = replace(
        cfg.text, vocab_size=shapes.vocab_size, width=t.width, depth=t.depth, heads=t.heads,
        intermediate=t.mlp, layer_norm_eps=t.eps, max_len=min(cfg.text.max_len, shapes.max_len),
    )  # fmt: skip
    return replace(cfg, image=image, text=text, embed_dim=shapes.embed_dim)


def _efficientnet(cfg: ImageTowerConfig, regions_side: int, load_weights: bool) -> nn.Module:
    tower = EfficientNetLite(cfg.image_size, regions_side, cfg.drop_path, variant=EFFICIENTNETS[cfg.kind])
    if load_weights and cfg.pretrained:
        tower.load_pretrained(cfg.pretrained)
    return tower


def _vit(cfg: ImageTowerConfig, regions_side: int, load_weights: bool) -> nn.Module:
    vit = VisionTransformer(
        cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, regions_side
    )
    if load_weights and cfg.pretrained:
        vit.load_pretrained(cfg.pretrained)
    return vit


IMAGE_TOWERS: dict[str, Callable[[ImageTowerConfig, int, bool], nn.Module]] = {
    **dict.fromkeys(EFFICIENTNETS, _efficientnet),
    "vit": _vit,
}  # CLIP-family image towers come with their text tower, from one checkpoint (`Towers`)


def build_image_tower(cfg: ImageTowerConfig, regions_side: int, load_weights: bool) -> nn.Module:
    if cfg.mirror_average and cfg.kind not in EFFICIENTNETS:
        raise ValueError(f"image.mirror_average needs a convolutional tower, not {cfg.kind!r}")
    if cfg.kind not in IMAGE_TOWERS:
        raise ValueError(f"image.kind {cfg.kind!r} is one of {', '.join(IMAGE_TOWERS)} (or set model.init)")
    return IMAGE_TOWERS[cfg.kind](cfg, regions_side, load_weights)


def build_text_tower(cfg: TextTowerConfig, load_weights: bool) -> BertTextTower:
    if load_weights and cfg.pretrained:
        return BertTextTower.from_pretrained(resolve_text_dir(cfg.pretrained), cfg)
    return BertTextTower(cfg)


class Towers(nn.Module):
    def __init__(self, cfg: ModelConfig, load_weights: bool) -> None:
        super().__init__()
        text_dropout = cfg.head_dropout if cfg.text_head_dropout is None else cfg.text_head_dropout
        self.logit_scale: float | None = None  # a CLIP-family checkpoint's, when its weights were loaded
        self.logit_bias: float | None = None  # a SigLIP checkpoint's, likewise
        if cfg.clip_config:
            self._clip(cfg, load_weights, text_dropout)
            return
        self.image_tower = build_image_tower(cfg.image, cfg.regions_side, load_weights)
        self.text_tower = build_text_tower(cfg.text, load_weights)
        self.image_head = ProjectionHead(int(self.image_tower.width), cfg.embed_dim, cfg.head_dropout)
        self.text_head = ProjectionHead(self.text_tower.width, cfg.embed_dim, text_dropout)

    def _clip(self, cfg: ModelConfig, load_weights: bool, text_dropout: float) -> None:
        """Both towers from one CLIP or SigLIP checkpoint; its projections become the heads (no
        bias for CLIP; SigLIP's vision tower pools into the joint space itself: an identity head)."""
        shapes = clip.shapes_from_hf(json.loads(cfg.clip_config))
        siglip = shapes.family == "siglip"
        if load_weights and cfg.init:
            image, text, heads = clip.from_state_dict(shapes, clip.read_state_dict(Path(cfg.init)))
            self.logit_scale = heads.logit_scale
            self.logit_bias = heads.logit_bias if siglip else None
        else:
            image, text = clip.build_towers(shapes)
            heads = None
        self.image_tower, self.text_tower = image, text
        self.image_head = ProjectionHead(shapes.vision.width, cfg.embed_dim, cfg.head_dropout, bias=False)
        self.text_head = ProjectionHead(shapes.text.width, cfg.embed_dim, text_dropout, bias=siglip)
        with torch.no_grad():
            if siglip:
                self.image_head.proj.weight.copy_(torch.eye(cfg.embed_dim, shapes.vision.width))
            elif heads is not None and heads.image is not None:
                self.image_head.proj.weight.copy_(heads.image.weight)
            if heads is not None:
                self.text_head.proj.load_state_dict(heads.text.state_dict())

    def encode_image(
        self, h: torch.Tensor, start: int = 0, mirrored: bool = False, with_locals: bool = True
    ) -> Encoded:
        """From normalised pixels (start = 0) or the hidden state after `start` stages.

        `mirrored`: the batch is [images; their mirrors] (2B, ...); the final feature maps of each
        pair are averaged, the mirror's flipped back so that regions line up.
        `with_locals`: project the local features too (the head over every region is, with its
        dropout, most of a locked-tower step; only the LMI term reads them).
        """
        tower = self.image_tower
        if start == 0:
            h = tower.embed(h)
        fmap = tower.run_stages(h, start, tower.num_stages)  # (B or 2B, C, h, w)
        if mirrored:
            direct, mirror = fmap.chunk(2)  # (B, C, h, w) each
            fmap = 0.5 * (direct + mirror.flip(-1))
        pooled, local, mask = tower.finish(fmap)  # (B, W), (B, R, W)
        if not with_locals:
            return Encoded(self.image_head(pooled), None, None)
        return Encoded(self.image_head(pooled), self.image_head(local), mask)

    def encode_text(
        self, h: torch.Tensor, attention_mask: torch.Tensor, start: int = 0, with_locals: bool = True
    ) -> Encoded:
        """From token ids (start = 0) or the hidden states (B, L, W) after `start` stages."""
        tower = self.text_tower
        if start == 0:
            h = tower.embed(h)
        h = tower.run_stages(h, start, tower.num_stages, attention_mask)
        pooled, local, mask = tower.finish(h, attention_mask)  # (B, W), (B, L-1, W), (B, L-1)
        if not with_locals:
            return Encoded(self.text_head(pooled), None, None)
        return Encoded(self.text_head(pooled), self.text_head(local), mask)


class DualEncoder(nn.Module):
    """Image-text dual encoder with everything CODIS and TCL train (docs/architecture.md §2)."""

    def __init__(self, cfg: ModelConfig, load_weights: bool = True) -> None:
        """`load_weights=False` skips pretrained files (a checkpoint's state dict follows)."""
        super().__init__()
        cfg = resolve_config(cfg, read_pretrained=load_weights)
        self.cfg = cfg
        self.online = Towers(cfg, load_weights)
        self.momentum = momentum_copy(self.online)
        for head in (self.momentum.image_head, self.momentum.text_head):
            head.dropout.p = 0.0  # head dropout regularises the student, never the teacher's targets
        self.codebook = Codebook(cfg.codebook_size, cfg.embed_dim)
        temp = cfg.temp_init if self.online.logit_scale is None else math.exp(-self.online.logit_scale)
        self.temp = nn.Parameter(torch.tensor(min(max(temp, cfg.temp_min), cfg.temp_max)))
        self.logit_bias: nn.Parameter | None = None  # the sigmoid objective's b (config, or SigLIP's own)
        if cfg.logit_bias is not None:
            bias = cfg.logit_bias if self.online.logit_bias is None else self.online.logit_bias
            self.logit_bias = nn.Parameter(torch.tensor(bias))
        self.queue = PairQueue(cfg.queue_size, cfg.embed_dim)
        assert cfg.image.mean is not None and cfg.image.std is not None
        self.register_buffer("pixel_mean", torch.tensor(cfg.image.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.image.std).view(1, 3, 1, 1), persistent=False)
        self.image_locked = 0  # leading image-tower stages frozen (see `lock`)
        self.text_locked = 0
        self._frozen: list[nn.Module] = []

    def lock(self, image_stages: int, text_stages: int, freeze_batchnorm: bool = False) -> None:
        """Freezes the first stages of each tower (-1 = all); they stay in eval mode for good.

        The momentum twin's copies of locked stages equal the online ones, so a locked prefix is
        computed once per step (`image_prefix` / `text_prefix`) and shared by both.
        `freeze_batchnorm`: the image towers' BatchNorm layers in unlocked stages stay in eval mode
        too — normalising with their pretrained running statistics, which they no longer update —
        while their scale and shift still train (fine-tuning a CNN on data unlike its pretraining).
        """
        self.image_locked = resolve_locked(self.online.image_tower, image_stages)
        self.text_locked = resolve_locked(self.online.text_tower, text_stages)
        self._frozen = freeze(self.online.image_tower, self.image_locked)
        self._frozen += freeze(self.online.text_tower, self.text_locked)
        self._frozen += freeze(self.momentum.image_tower, self.image_locked)
        self._frozen += freeze(self.momentum.text_tower, self.text_locked)
        if freeze_batchnorm:
            towers = (self.online.image_tower, self.momentum.image_tower)
            self._frozen += [
                m for t in towers for m in t.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
        self.train(self.training)

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    @torch.no_grad()
    def image_prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, H, W) -> hidden state after the locked image stages."""
        tower = self.online.image_tower
        x = (pixels - self.pixel_mean.to(pixels.dtype)) / self.pixel_std.to(pixels.dtype)
        return tower.run_stages(tower.embed(x), 0, self.image_locked)

    @torch.no_grad()
    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> hidden states (B, L, W) after the locked text stages."""
        tower = self.online.text_tower
        return tower.run_stages(tower.embed(input_ids), 0, self.text_locked, attention_mask)

    def temperature(self) -> torch.Tensor:
        """τ, clamped in place to [temp_min, temp_max] first (as ALBEF)."""
        with torch.no_grad():
            self.temp.clamp_(self.cfg.temp_min, self.cfg.temp_max)
        return self.temp

    def encode_image(
        self, pixels: torch.Tensor, momentum: bool = False, prefixed: bool = False, with_locals: bool = True
    ) -> Encoded:
        """RGB in [0, 1] (B, 3, H, W) -> Encoded; `prefixed`: the input is `image_prefix`'s output."""
        h = pixels if prefixed else self.image_input(pixels)
        towers = self.momentum if momentum else self.online
        with torch.set_grad_enabled(torch.is_grad_enabled() and not momentum):
            return towers.encode_image(h, self.image_locked, self.mirrored, with_locals)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        momentum: bool = False,
        prefixed: bool = False,
        with_locals: bool = True,
    ) -> Encoded:
        """Token ids (B, L) -> Encoded; `prefixed`: `input_ids` is `text_prefix`'s output."""
        h = input_ids if prefixed else self.text_input(input_ids, attention_mask)
        towers = self.momentum if momentum else self.online
        with torch.set_grad_enabled(torch.is_grad_enabled() and not momentum):
            return towers.encode_text(h, attention_mask, self.text_locked, with_locals)

    @property
    def mirrored(self) -> bool:
        """Whether images are encoded with their mirror (`image.mirror_average`, eval mode only)."""
        return self.cfg.image.mirror_average and not self.training

    def image_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the trainable image stages start from: the locked prefix's states, or normalised pixels.

        Mirrored (eval mode with `image.mirror_average`): of the batch and its mirror, (2B, ...).
        """
        if self.mirrored:
            pixels = torch.cat([pixels, pixels.flip(-1)])  # (2B, 3, H, W)
        if self.image_locked:
            return self.image_prefix(pixels)
        return (pixels - self.pixel_mean.to(pixels.dtype)) / self.pixel_std.to(pixels.dtype)

    def text_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the trainable text stages start from: the locked prefix's states, or token ids."""
        if self.text_locked:
            return self.text_prefix(input_ids, attention_mask)
        return input_ids

    def code_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine of each embedding to each code, (B, d) -> (B, K)."""
        return embedding @ self.codebook.vectors().T

    def step_features(
        self,
        view1: torch.Tensor,  # (B, 3, H, W) pixels, or image prefix states when `prefixed`
        view2: torch.Tensor,  # (B, 3, H, W) likewise
        input_ids: torch.Tensor,  # (B, L) token ids, or text prefix states (B, L, W) when `prefixed`
        attention_mask: torch.Tensor,  # (B, L)
        ids: torch.Tensor,  # (B,)
        prefixed: bool = False,
        locals_m: bool = True,
    ) -> StepFeatures:
        """Online features of view 1 and the text; momentum features of view 2 and the text, with
        the momentum local features when `locals_m` (no objective reads the online ones)."""
        if not prefixed:  # compute each locked prefix once, for the online and momentum towers
            view1, view2 = self.image_input(view1), self.image_input(view2)
            input_ids = self.text_input(input_ids, attention_mask)
        image = self.encode_image(view1, prefixed=True, with_locals=False)
        text = self.encode_text(input_ids, attention_mask, prefixed=True, with_locals=False)
        image_m = self.encode_image(view2, momentum=True, prefixed=True, with_locals=locals_m)
        text_m = self.encode_text(
            input_ids, attention_mask, momentum=True, prefixed=True, with_locals=locals_m
        )
        return StepFeatures(
            image=image.global_,
            text=text.global_,
            image_m=image_m.global_,
            text_m=text_m.global_,
            image_locals_m=image_m.local,
            image_locals_mask=image_m.mask,
            text_locals_m=text_m.local,
            text_locals_mask=text_m.mask,
            ids=ids,
        )

    forward = step_features  # what DistributedDataParallel wraps

    def optimizer_groups(self, lr: float, weight_decay: float, tower_scale: float) -> list[dict]:
        """AdamW's parameter groups: the towers' layers at lr × tower_scale, the rest (heads,
        codebook, temperature) at lr; weight decay only on matrices that are not embeddings or codes.
        Frozen (locked) parameters are left out."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        towers = {id(p) for t in (self.online.image_tower, self.online.text_tower) for p in t.parameters()}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2 and p is not self.codebook.weight and "embeddings" not in name
            groups.setdefault((id(p) in towers, decay), []).append(p)
        return [
            {"params": ps, "lr": lr * (tower_scale if tower else 1.0),
             "weight_decay": weight_decay if decay else 0.0}
            for (tower, decay), ps in sorted(groups.items())
        ]  # fmt: skip

    @torch.no_grad()
    def update_momentum(self) -> None:
        ema_update(self.momentum, self.online, self.cfg.momentum)
