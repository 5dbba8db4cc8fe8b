"""BERT-style text tower (Devlin et al. 2019) in the Hugging Face `BertModel` parameter layout, so
checkpoints such as all-MiniLM-L6-v2 (config.json + model.safetensors) load by name.

Pooling: "cls" (the [CLS] state, as ALBEF/TCL) or "mean" (attention-masked mean, as
sentence-transformers); with "mean" and the MiniLM weights it reproduces
`shared/golden/minilm_l6_sentence_embeddings.json` (tests/train/test_towers.py).

Outputs: pooled (B, W), token states except [CLS] as locals (B, L-1, W), their mask (B, L-1).
With `concat_layers` (taps), the hidden state after a tapped layer carries that layer's states
along as extra channels — (B, L, W_layer × (1 + taps so far)) — so a locked prefix, a feature cache
and `finish` all see one tensor; the output width W is W_layer × (1 + len(concat_layers)).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.config import TextTowerConfig


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextTowerConfig, max_positions: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_positions, cfg.width)
        self.token_type_embeddings = nn.Embedding(2, cfg.width)
        self.LayerNorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, L, W)
        h = h + self.token_type_embeddings.weight[0]  # single-segment input: type id 0
        return self.dropout(self.LayerNorm(h))


class _Dense(nn.Module):
    """Linear -> dropout -> residual LayerNorm (BertSelfOutput / BertOutput)."""

    def __init__(self, fan_in: int, width: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(fan_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.sqrt_head_width = math.sqrt(cfg.width // cfg.heads)
        self.dropout_p = cfg.dropout
        self.query = nn.Linear(cfg.width, cfg.width)
        self.key = nn.Linear(cfg.width, cfg.width)
        self.value = nn.Linear(cfg.width, cfg.width)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, w = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)  # (B, H, L, Dh)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))  # (B, H, L, Dh)
        if torch.onnx.is_in_onnx_export():  # spelled out: the pattern ONNX Runtime fuses into Attention
            scores = torch.matmul(q, k.transpose(-1, -2)) / self.sqrt_head_width + bias  # (B, H, L, L)
            y = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, L, Dh)
        else:
            p = self.dropout_p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, L, Dh)
        return y.transpose(1, 2).reshape(b, n, w)


class _Attention(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _Dense(cfg.width, cfg.width, cfg.layer_norm_eps, cfg.dropout)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, bias), h)


class _Intermediate(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.width, cfg.intermediate)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(h))  # erf GELU, as BERT


class BertLayer(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Dense(cfg.intermediate, cfg.width, cfg.layer_norm_eps, cfg.dropout)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, bias)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.depth))


class BertTextTower(nn.Module):
    """BERT encoder; `forward(input_ids, attention_mask)` returns (pooled, locals, locals_mask)."""

    def __init__(self, cfg: TextTowerConfig, max_positions: int = 512) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"text width {cfg.width} is not a multiple of heads {cfg.heads}")
        if cfg.max_len > max_positions:
            raise ValueError(f"text max_len {cfg.max_len} exceeds {max_positions} positions")
        taps = cfg.concat_layers
        if any(not 1 <= n < cfg.depth for n in taps) or len(set(taps)) != len(taps):
            raise ValueError(f"text concat_layers {taps} must be distinct layers in 1..{cfg.depth - 1}")
        self.cfg = cfg
        self.width = cfg.width * (1 + len(taps))
        self.embeddings = BertEmbeddings(cfg, max_positions)
        self.encoder = _Encoder(cfg)
        self.apply(_init_weights)

    # Staged interface (train.model.tower): embeddings | layers | pooling. `mask` is the
    # attention mask (B, L); hidden states keep all L positions, [CLS] first.
    @property
    def num_stages(self) -> int:
        return len(self.encoder.layer)

    def embed(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embeddings(input_ids)  # (B, L, W)

    def run_stages(
        self, h: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert mask is not None, "the text tower needs its attention mask"
        if start >= stop:
            return h
        keep = mask[:, None, None, :].to(h.dtype)  # (B, 1, 1, L): 1 = token, 0 = padding
        bias = (1.0 - keep) * torch.finfo(h.dtype).min  # (B, 1, 1, L): 0 or the dtype's min
        w, taps = self.cfg.width, self.cfg.concat_layers
        for n, layer in enumerate(self.encoder.layer[start:stop], start=start + 1):
            run = layer(h[..., :w], bias)  # (B, L, w): the running state
            carried = [h[..., w:]] if any(t < n for t in taps) else []  # earlier tapped layers' states
            if n in taps:
                carried.append(run)
            h = torch.cat([run, *carried], -1) if carried else run  # (B, L, w × (1 + taps so far))
        return h

    def finish(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert mask is not None, "the text tower needs its attention mask"
        keep = mask.bool()  # (B, L)
        if self.cfg.pooling == "cls":
            pooled = h[:, 0]  # (B, W)
        else:
            weights = keep.to(h.dtype).unsqueeze(-1)  # (B, L, 1)
            pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1e-9)  # (B, W)
        return pooled, h[:, 1:], keep[:, 1:]

    def stage_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """[embed, layer 1 .. layer n, finish] — what freezing k stages locks (tower.py)."""
        return [[self.embeddings], *[[layer] for layer in self.encoder.layer], []]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.run_stages(self.embed(input_ids), 0, self.num_stages, attention_mask)
        return self.finish(h, attention_mask)

    @classmethod
    def from_pretrained(cls, directory: str | Path, cfg: TextTowerConfig) -> BertTextTower:
        """Builds the tower with the checkpoint's shapes and loads its weights strictly."""
        from safetensors.torch import load_file

        directory = Path(directory)
        hf = json.loads((directory / "config.json").read_text())
        if hf.get("model_type", "bert") != "bert":
            raise ValueError(f"{directory}: model_type {hf.get('model_type')!r} is not a BERT")
        cfg = hf_to_config(hf, cfg)
        tower = cls(cfg, max_positions=hf["max_position_embeddings"])
        state = load_file(str(directory / "model.safetensors"))
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith(("pooler.", "cls.")) and k != "embeddings.position_ids"
        }
        tower.load_state_dict(state, strict=True)
        return tower


def hf_to_config(hf: dict, cfg: TextTowerConfig) -> TextTowerConfig:
    """A Hugging Face BERT config.json's shapes written onto our tower config."""
    return replace(
        cfg,
        vocab_size=hf["vocab_size"],
        width=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        heads=hf["num_attention_heads"],
        intermediate=hf["intermediate_size"],
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
    )


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
