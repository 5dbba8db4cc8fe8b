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

from dataclasses import dataclass, replace

import torch
from torch import nn

from train.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from train.model.bert import BertTextTower
from train.model.efficientnet import LITE0_MEAN, LITE0_STD, EfficientNetLite0
from train.model.heads import Codebook, ProjectionHead
from train.model.momentum import ema_update, momentum_copy
from train.model.pretrained import resolve_text_dir
from train.model.queue import PairQueue
from train.model.vit import VisionTransformer
from train.objectives.features import StepFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Encoded:
    global_: torch.Tensor  # (B, d), L2-normalised
    local: torch.Tensor  # (B, N, d), L2-normalised
    mask: torch.Tensor  # (B, N) bool


def resolve_config(cfg: ModelConfig) -> ModelConfig:
    """Fills what the towers imply: pixel statistics, and a pretrained BERT's shapes."""
    image = cfg.image
    if image.mean is None or image.std is None:
        lite = image.kind == "efficientnet_lite0"
        image = replace(
            image,
            mean=image.mean or (LITE0_MEAN if lite else IMAGENET_MEAN),
            std=image.std or (LITE0_STD if lite else IMAGENET_STD),
        )
    text = cfg.text
    if text.pretrained:
        import json

        from train.model.bert import hf_to_config

        hf = json.loads((resolve_text_dir(text.pretrained) / "config.json").read_text())
        text = hf_to_config(hf, text)
    return replace(cfg, image=image, text=text)


def build_image_tower(cfg: ImageTowerConfig, regions_side: int, load_weights: bool) -> nn.Module:
    if cfg.kind == "efficientnet_lite0":
        tower = EfficientNetLite0(cfg.image_size, regions_side, cfg.drop_path)
        if load_weights and cfg.pretrained:
            tower.load_pretrained(cfg.pretrained)
        return tower
    vit = VisionTransformer(
        cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, regions_side
    )
    if load_weights and cfg.pretrained:
        vit.load_pretrained(cfg.pretrained)
    return vit


def build_text_tower(cfg: TextTowerConfig, load_weights: bool) -> BertTextTower:
    if load_weights and cfg.pretrained:
        return BertTextTower.from_pretrained(resolve_text_dir(cfg.pretrained), cfg)
    return BertTextTower(cfg)


class Towers(nn.Module):
    def __init__(self, cfg: ModelConfig, load_weights: bool) -> None:
        super().__init__()
        self.image_tower = build_image_tower(cfg.image, cfg.regions_side, load_weights)
        self.text_tower = build_text_tower(cfg.text, load_weights)
        self.image_head = ProjectionHead(int(self.image_tower.width), cfg.embed_dim)
        self.text_head = ProjectionHead(self.text_tower.width, cfg.embed_dim)

    def encode_image(self, pixels: torch.Tensor) -> Encoded:
        pooled, local, mask = self.image_tower(pixels)  # (B, W), (B, R, W), (B, R)
        return Encoded(self.image_head(pooled), self.image_head(local), mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        pooled, local, mask = self.text_tower(input_ids, attention_mask)  # (B, W), (B, L-1, W)
        return Encoded(self.text_head(pooled), self.text_head(local), mask)


class DualEncoder(nn.Module):
    """Image-text dual encoder with everything CODIS and TCL train (DESIGN.md §3)."""

    def __init__(self, cfg: ModelConfig, load_weights: bool = True) -> None:
        """`load_weights=False` skips pretrained files (a checkpoint's state dict follows)."""
        super().__init__()
        cfg = resolve_config(cfg)
        self.cfg = cfg
        self.online = Towers(cfg, load_weights)
        self.momentum = momentum_copy(self.online)
        self.codebook = Codebook(cfg.codebook_size, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(cfg.temp_init))
        self.queue = PairQueue(cfg.queue_size, cfg.embed_dim)
        assert cfg.image.mean is not None and cfg.image.std is not None
        self.register_buffer("pixel_mean", torch.tensor(cfg.image.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.image.std).view(1, 3, 1, 1), persistent=False)

    def temperature(self) -> torch.Tensor:
        """τ, clamped in place to [temp_min, temp_max] first (as ALBEF)."""
        with torch.no_grad():
            self.temp.clamp_(self.cfg.temp_min, self.cfg.temp_max)
        return self.temp

    def encode_image(self, pixels: torch.Tensor, momentum: bool = False) -> Encoded:
        """RGB in [0, 1] (B, 3, H, W) -> Encoded."""
        x = (pixels - self.pixel_mean.to(pixels.dtype)) / self.pixel_std.to(pixels.dtype)  # (B, 3, H, W)
        if momentum:
            with torch.no_grad():
                return self.momentum.encode_image(x)
        return self.online.encode_image(x)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, momentum: bool = False
    ) -> Encoded:
        if momentum:
            with torch.no_grad():
                return self.momentum.encode_text(input_ids, attention_mask)
        return self.online.encode_text(input_ids, attention_mask)

    def code_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine of each embedding to each code, (B, d) -> (B, K)."""
        return embedding @ self.codebook.vectors().T

    def step_features(
        self,
        view1: torch.Tensor,  # (B, 3, H, W)
        view2: torch.Tensor,  # (B, 3, H, W)
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor,  # (B, L)
        ids: torch.Tensor,  # (B,)
    ) -> StepFeatures:
        """Online features of view 1 and the text; momentum features of view 2 and the text."""
        image = self.encode_image(view1)
        text = self.encode_text(input_ids, attention_mask)
        image_m = self.encode_image(view2, momentum=True)
        text_m = self.encode_text(input_ids, attention_mask, momentum=True)
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

    @torch.no_grad()
    def update_momentum(self) -> None:
        ema_update(self.momentum, self.online, self.cfg.momentum)
