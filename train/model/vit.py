"""Vision Transformer image tower (Dosovitskiy et al. 2021) in the timm/DeiT parameter layout, so a
DeiT checkpoint (`{"model": state_dict}` or a bare state dict) loads by name; position embeddings
are bicubically interpolated when the configured image size differs from the checkpoint's.

Tiny configurations serve the tests and the shapes demo; ViT-B/16 (width 768, depth 12, heads 12)
is the paper recipe's image tower (TCL, §4.1).

Outputs: the [CLS] state (B, W), patch tokens pooled to a regions x regions grid (B, R, W), mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from train.model.layers import RegionPool

LN_EPS = 1e-6  # timm's ViT


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # (3,B,H,N,Dh)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, Dh)
        return self.proj(y.transpose(1, 2).reshape(b, n, w))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, W)


class VisionTransformer(nn.Module):
    """ViT backbone; `forward` returns (cls_state, region_locals, mask)."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        regions_side: int = 4,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if width % heads:
            raise ValueError(f"ViT width {width} is not a multiple of heads {heads}")
        self.width = width
        self.grid_side = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_side**2, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.regions = RegionPool(self.grid_side, regions_side)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    # Staged interface (train.model.tower): patch/pos embedding | blocks | final norm + pooling.
    @property
    def num_stages(self) -> int:
        return len(self.blocks)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.patch_embed(x)  # (B, N, W)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, W)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, 1+N, W)

    def run_stages(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            h = block(h)
        return h

    def finish(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm(h)
        local = self.regions(h[:, 1:])  # (B, R, W)
        keep = torch.ones(local.shape[:2], dtype=torch.bool, device=h.device)  # (B, R)
        return h[:, 0], local, keep

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """[embed, block 1 .. block n, finish] — what freezing k stages locks (tower.py)."""
        return [[self.patch_embed, self.cls_token, self.pos_embed], *[[b] for b in self.blocks], [self.norm]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.finish(self.run_stages(self.embed(x), 0, self.num_stages))

    def load_pretrained(self, path: str) -> None:
        """Loads a timm/DeiT-layout checkpoint; classifier heads are dropped, the rest is strict."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))}
        if "dist_token" in state:
            raise ValueError(f"{path}: distilled DeiT checkpoints (dist_token) are not supported")
        pos = state.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape:
            state["pos_embed"] = resize_pos_embed(pos, self.grid_side)
        self.load_state_dict(state, strict=True)


def resize_pos_embed(pos: torch.Tensor, grid_side: int) -> torch.Tensor:
    """(1, 1+n², W) -> (1, 1+grid_side², W) by bicubic interpolation of the patch part (as timm)."""
    cls, grid = pos[:, :1], pos[:, 1:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"pos_embed with {grid.shape[1]} patch positions is not a square grid")
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, W, n, n)
    grid = F.interpolate(grid.float(), size=(grid_side, grid_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_side * grid_side, -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
