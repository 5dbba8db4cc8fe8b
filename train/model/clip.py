"""CLIP-family towers (OpenAI CLIP, SigLIP) in the staged tower interface (train/model/tower.py),
with Hugging Face `CLIPModel` / `SiglipModel` parameter names, so a checkpoint directory loads by
name (`load_hf`); open_clip state dicts are renamed to the same layout (`open_clip_to_hf`).

    shapes = read_hf_config(path)                 # config.json -> ClipShapes
    image, text = build_towers(shapes)            # random init, or:
    image, text, heads, shapes = load_hf(path)    # + the projections and logit scale / bias
    shapes, state = open_clip_to_hf(torch.load(pt)); from_state_dict(shapes, state)

Towers, each `embed -> run_stages -> finish` (pooled (B, W), locals (B, N, W), mask (B, N)):
- `ClipVisionTower`: patches (no bias) + class token + positions, pre-LN, pre-norm encoder layers,
  post-LN; pooled = the class token, locals = the patch tokens (post-LN).
- `SiglipVisionTower`: patches (bias) + positions, no class token, encoder, post-LN; pooled by
  multi-head attention from a learned probe (SigLIP's "MAP" head); locals = the patch tokens.
- `ClipTextTower`: tokens + positions, causal self-attention (and the padding mask), final LN;
  pooled = the end-of-text token's state, the last real token of each row.
- `SiglipTextTower`: the same without the causal mask; pooled = the state at the last position,
  which is why SigLIP texts are padded to their full length (`pad_to_max_len`).

The projections to the joint space (`visual_projection`, `text_projection` for CLIP, no bias;
SigLIP's text `head`, with bias) are returned apart: they are the dual encoder's heads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Family = Literal["clip", "siglip"]
Activation = Literal["quick_gelu", "gelu", "gelu_pytorch_tanh"]


@dataclass(frozen=True)
class EncoderShape:
    width: int
    depth: int
    heads: int
    mlp: int  # hidden width of each layer's MLP
    eps: float  # LayerNorm epsilon
    act: Activation


@dataclass(frozen=True)
class ClipShapes:
    """What a CLIP or SigLIP checkpoint's config.json says about its towers."""

    family: Family
    vision: EncoderShape
    text: EncoderShape
    image_size: int
    patch_size: int
    vocab_size: int
    max_len: int  # text positions
    embed_dim: int  # the joint space: CLIP's projection_dim, SigLIP's text projection_size
    eos_id: int  # CLIP: the end-of-text token that pools (2: legacy configs, pool at the highest id)
    pad_id: int


def _activation(name: Activation) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if name == "gelu_pytorch_tanh" else "none")


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Separate q, k, v and output projections, as both checkpoints name them."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, W); bias: additive (B, 1, L, L) or None."""
        b, n, w = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, w // self.heads).transpose(1, 2)  # (B, H, L, Dh)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, L, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))  # (B, L, W)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: Activation) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), _activation(act), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, s: EncoderShape) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(s.width, eps=s.eps)
        self.self_attn = Attention(s.width, s.heads)
        self.layer_norm2 = nn.LayerNorm(s.width, eps=s.eps)
        self.mlp = Mlp(s.width, s.mlp, s.act)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), bias)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, s: EncoderShape) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(s) for _ in range(s.depth))


class _Staged(nn.Module):
    """The stage plumbing both modalities share: stage i is encoder layer i."""

    encoder: Encoder

    @property
    def num_stages(self) -> int:
        return len(self.encoder.layers)

    def run_stages(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image tokens attend to every token (the text towers add their masks)."""
        return self._run(h, start, stop, None)

    def _run(self, h: torch.Tensor, start: int, stop: int, bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.encoder.layers[start:stop]:
            h = layer(h, bias)
        return h


class VisionEmbeddings(nn.Module):
    def __init__(self, width: int, image_size: int, patch_size: int, class_token: bool) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=not class_token)
        positions = (image_size // patch_size) ** 2 + int(class_token)
        self.class_embedding = nn.Parameter(torch.randn(width)) if class_token else None
        self.position_embedding = nn.Embedding(positions, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, P, W)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # (B, 1, W)
            patches = torch.cat([cls, patches], dim=1)  # (B, 1 + P, W)
        return patches + self.position_embedding.weight.to(patches.dtype)  # (B, N, W)


class ClipVisionTower(_Staged):
    def __init__(self, s: ClipShapes) -> None:
        super().__init__()
        self.width = s.vision.width
        self.embeddings = VisionEmbeddings(s.vision.width, s.image_size, s.patch_size, class_token=True)
        self.pre_layrnorm = nn.LayerNorm(s.vision.width, eps=s.vision.eps)  # sic: the checkpoints' name
        self.encoder = Encoder(s.vision)
        self.post_layernorm = nn.LayerNorm(s.vision.width, eps=s.vision.eps)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pre_layrnorm(self.embeddings(x))  # (B, 1 + P, W)

    def finish(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.post_layernorm(h)  # (B, 1 + P, W)
        local = h[:, 1:]  # (B, P, W)
        return h[:, 0], local, torch.ones(local.shape[:2], dtype=torch.bool, device=h.device)

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        return [[self.embeddings, self.pre_layrnorm], *[[layer] for layer in self.encoder.layers],
                [self.post_layernorm]]  # fmt: skip


class AttentionPoolHead(nn.Module):
    """SigLIP's pooling: a learned probe attends over the tokens, then a residual MLP."""

    def __init__(self, s: EncoderShape) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, s.width))
        self.attention = nn.MultiheadAttention(s.width, s.heads, batch_first=True)
        self.layernorm = nn.LayerNorm(s.width, eps=s.eps)
        self.mlp = Mlp(s.width, s.mlp, s.act)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(h.shape[0], -1, -1)  # (B, 1, W)
        pooled = self.attention(probe, h, h, need_weights=False)[0]  # (B, 1, W)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]  # (B, W)


class SiglipVisionTower(_Staged):
    def __init__(self, s: ClipShapes) -> None:
        super().__init__()
        self.width = s.vision.width
        self.embeddings = VisionEmbeddings(s.vision.width, s.image_size, s.patch_size, class_token=False)
        self.encoder = Encoder(s.vision)
        self.post_layernorm = nn.LayerNorm(s.vision.width, eps=s.vision.eps)
        self.head = AttentionPoolHead(s.vision)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embeddings(x)  # (B, P, W)

    def finish(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.post_layernorm(h)  # (B, P, W)
        return self.head(h), h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        return [
            [self.embeddings],
            *[[layer] for layer in self.encoder.layers],
            [self.post_layernorm, self.head],
        ]


class TextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, max_len: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_len, width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (
            self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]
        )  # (B, L, W)


class ClipTextTower(_Staged):
    causal = True

    def __init__(self, s: ClipShapes) -> None:
        super().__init__()
        self.width = s.text.width
        self.embeddings = TextEmbeddings(s.vocab_size, s.max_len, s.text.width)
        self.encoder = Encoder(s.text)
        self.final_layer_norm = nn.LayerNorm(s.text.width, eps=s.text.eps)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embeddings(x)

    def run_stages(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._run(h, start, stop, self._bias(h, mask))

    def _bias(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Additive attention bias (B, 1, L, L): padding keys masked, and later tokens if causal."""
        b, n = h.shape[:2]
        allowed = torch.ones(b, 1, n, n, dtype=torch.bool, device=h.device)
        if self.causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        if mask is not None:
            allowed = allowed & mask.bool()[:, None, None, :]
        if not self.causal and mask is None:
            return None
        return torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill(
            ~allowed, torch.finfo(h.dtype).min
        )

    def finish(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.final_layer_norm(h)  # (B, L, W)
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        return self.pool(h, mask), h, mask

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The end-of-text token: the last real token of each (right-padded) row."""
        last = mask.long().sum(dim=1) - 1  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]  # (B, W)

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        return [[self.embeddings], *[[layer] for layer in self.encoder.layers], [self.final_layer_norm]]


class SiglipTextTower(ClipTextTower):
    causal = False

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return h[:, -1]  # (B, W): the last position, a pad token for short texts (trained that way)


def _shape(cfg: dict, default_act: Activation) -> EncoderShape:
    return EncoderShape(
        width=cfg["hidden_size"], depth=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
        mlp=cfg["intermediate_size"], eps=cfg.get("layer_norm_eps", 1e-5),
        act=cfg.get("hidden_act", default_act),
    )  # fmt: skip


def shapes_from_hf(config: dict) -> ClipShapes:
    """A Hugging Face CLIPConfig or SiglipConfig (as a dict) -> ClipShapes."""
    kind = config.get("model_type", "")
    if kind not in ("clip", "siglip"):
        raise ValueError(f"model_type {kind!r}: only clip and siglip checkpoints are supported")
    text, vision = config["text_config"], config["vision_config"]
    default_act: Activation = "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh"
    return ClipShapes(
        family=kind, vision=_shape(vision, default_act), text=_shape(text, default_act),
        image_size=vision["image_size"], patch_size=vision["patch_size"], vocab_size=text["vocab_size"],
        max_len=text["max_position_embeddings"],
        embed_dim=config.get("projection_dim") or text.get("projection_size") or text["hidden_size"],
        eos_id=text.get("eos_token_id", 2), pad_id=text.get("pad_token_id", 1),
    )  # fmt: skip


def read_hf_config(path: str | Path) -> ClipShapes:
    return shapes_from_hf(json.loads(read_config_text(path)))


def read_config_text(path: str | Path) -> str:
    """A checkpoint directory's config.json, checked to be CLIP's or SigLIP's, as compact JSON."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"model.init {path}: no config.json (a Hugging Face CLIPModel or SiglipModel directory)"
        )
    config = json.loads(file.read_text())
    shapes_from_hf(config)  # refuses other model types by name
    return json.dumps(config, sort_keys=True)


DEFAULT_PIXELS = {  # (mean, std) of RGB in [0, 1] each family was trained with
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def pixel_statistics(path: str | Path, family: Family) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's preprocessor_config.json image_mean/std where it has one, else its family's."""
    file = Path(path) / "preprocessor_config.json" if path else None
    if file is not None and file.is_file():
        pre = json.loads(file.read_text())
        if "image_mean" in pre and "image_std" in pre:
            return tuple(pre["image_mean"]), tuple(pre["image_std"])
    return DEFAULT_PIXELS[family]


def build_towers(s: ClipShapes) -> tuple[_Staged, ClipTextTower]:
    if s.family == "clip":
        return ClipVisionTower(s), ClipTextTower(s)
    return SiglipVisionTower(s), SiglipTextTower(s)


@dataclass
class Heads:
    """What joins the towers: projections (W -> d) and the logit scale (and SigLIP's bias)."""

    image: nn.Linear | None  # None: the pooled state is the embedding (SigLIP's vision head pools)
    text: nn.Linear
    logit_scale: float  # log of the scale
    logit_bias: float


def load_hf(path: str | Path) -> tuple[_Staged, ClipTextTower, Heads, ClipShapes]:
    """A Hugging Face CLIPModel or SiglipModel directory (config.json + model.safetensors, or
    pytorch_model.bin) -> towers and heads, every tensor loaded (strict)."""
    path = Path(path)
    s = read_hf_config(path)
    state = read_state_dict(path)
    return (*from_state_dict(s, state), s)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def from_state_dict(s: ClipShapes, state: dict[str, torch.Tensor]) -> tuple[_Staged, ClipTextTower, Heads]:
    image, text = build_towers(s)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {
            k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and "position_ids" not in k
        }

    image.load_state_dict(part("vision_model."))
    if s.family == "clip":
        text.load_state_dict(part("text_model."))
        image_head = nn.Linear(s.vision.width, s.embed_dim, bias=False)
        image_head.load_state_dict(part("visual_projection."))
        text_head = nn.Linear(s.text.width, s.embed_dim, bias=False)
        text_head.load_state_dict(part("text_projection."))
        heads = Heads(image_head, text_head, float(state["logit_scale"]), 0.0)
    else:
        text_part = part("text_model.")
        text_head = nn.Linear(s.text.width, s.embed_dim)
        text_head.load_state_dict(
            {k[len("head.") :]: v for k, v in text_part.items() if k.startswith("head.")}
        )
        text.load_state_dict({k: v for k, v in text_part.items() if not k.startswith("head.")})
        heads = Heads(None, text_head, float(state["logit_scale"]), float(state["logit_bias"]))
    return image, text, heads


OPEN_CLIP_LAYER = (  # (ours, theirs) within a residual block, weight and bias each
    ("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
)  # fmt: skip
OPEN_CLIP_NORMS = (
    ("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
    ("text_model.final_layer_norm", "ln_final"),
)  # fmt: skip
OPEN_CLIP_TENSORS = (
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("logit_scale", "logit_scale"),
)


def open_clip_to_hf(
    state: dict[str, torch.Tensor], act: Activation = "quick_gelu", head_width: int = 64, eps: float = 1e-5
) -> tuple[ClipShapes, dict[str, torch.Tensor]]:
    """An open_clip (or OpenAI `clip`) ViT state dict -> (shapes, the same tensors under Hugging Face
    CLIPModel names). What the weights do not say is given: the MLP activation (`quick_gelu` for
    OpenAI's weights, `gelu` for most LAION ones: the model config's `quick_gelu`), the width per
    head (open_clip's default 64) and the LayerNorm epsilon. Text pools at the highest token id
    (the end-of-text token), as open_clip does."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}

    def encoder(src: str, dst: str) -> EncoderShape:
        prefix = f"{src}transformer.resblocks."
        depth = 1 + max(int(k.removeprefix(prefix).split(".")[0]) for k in state if k.startswith(prefix))
        for i in range(depth):
            theirs, ours = f"{prefix}{i}.", f"{dst}encoder.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = state[f"{theirs}attn.in_proj_{kind}"].chunk(3)  # stacked q, k, v
                for name, t in (("q", q), ("k", k), ("v", v)):
                    out[f"{ours}self_attn.{name}_proj.{kind}"] = t
                for a, b in OPEN_CLIP_LAYER:
                    out[f"{ours}{a}.{kind}"] = state[f"{theirs}{b}.{kind}"]
        hidden, width = state[f"{prefix}0.mlp.c_fc.weight"].shape
        return EncoderShape(width, depth, width // head_width, hidden, eps, act)

    vision, text = encoder("visual.", "vision_model."), encoder("", "text_model.")
    for ours, theirs in OPEN_CLIP_NORMS:
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = state[f"{theirs}.{kind}"]
    for ours, theirs in OPEN_CLIP_TENSORS:
        out[ours] = state[theirs]
    out["visual_projection.weight"] = state["visual.proj"].T.contiguous()  # theirs: x @ proj, (W, d)
    out["text_projection.weight"] = state["text_projection"].T.contiguous()
    patch = state["visual.conv1.weight"].shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)  # positions: 1 + grid²
    shapes = ClipShapes(
        family="clip", vision=vision, text=text, image_size=grid * patch, patch_size=patch,
        vocab_size=state["token_embedding.weight"].shape[0], max_len=state["positional_embedding"].shape[0],
        embed_dim=state["text_projection"].shape[1], eos_id=2, pad_id=0,
    )  # fmt: skip
    return shapes, out


def logits(image: torch.Tensor, text: torch.Tensor, heads: Heads) -> torch.Tensor:
    """(texts, images) logits from L2-normalised embeddings, as the checkpoint's own model scores them."""
    return text @ image.T * math.exp(heads.logit_scale) + heads.logit_bias  # (T, I)
