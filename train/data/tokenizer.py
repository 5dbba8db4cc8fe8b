"""Tokenisation with the `tokenizers` library, from a tokenizer.json — the same file the bundle
ships, so training and serving split text identically.

- `load_tokenizer("minilm-l6" | PATH)`: an existing BERT WordPiece tokenizer.
- `checkpoint_tokenizer(DIR)`: a CLIP-family checkpoint's own: its tokenizer.json, else (SigLIP)
  its sentencepiece spiece.model rebuilt as a `tokenizers` pipeline with transformers'
  SiglipTokenizer's text handling, so the bundle ships one tokenizer.json either way.
- `train_tokenizer(captions, vocab_size)`: a BERT-style uncased WordPiece vocabulary built from
  the training captions' most frequent words, for from-scratch text towers.
- `text_encoder(model_cfg, tokenizer)`: the TextEncoder a model's texts need (its max length; a
  CLIP-family model's pad id and padding), what training and export both build.
- `TextEncoder.encode(texts)`: ids and mask (B, L), truncated to max_len and padded to the
  longest text of the batch, not to max_len — or to max_len where the model pools the last
  position (SigLIP: `pad_to_max_len`). The pad id is the tokenizer's [PAD] unless given (CLIP pads
  with its end-of-text token).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from train.config import ModelConfig
from train.model.pretrained import minilm_l6_dir

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4 in a trained vocabulary


def load_tokenizer(spec: str) -> Tokenizer:
    if spec == "minilm-l6":
        return Tokenizer.from_file(str(minilm_l6_dir() / "tokenizer.json"))
    return Tokenizer.from_file(spec)


def checkpoint_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer a CLIP-family checkpoint directory ships (tokenizer.json or spiece.model)."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(directory / "tokenizer.json"))
    if (directory / "spiece.model").is_file():
        config = directory / "tokenizer_config.json"
        settings = json.loads(config.read_text()) if config.is_file() else {}
        return sentencepiece_tokenizer(directory / "spiece.model", settings.get("do_lower_case", True))
    raise ValueError(f"model.init {directory}: no tokenizer.json or spiece.model beside the weights")


def sentencepiece_tokenizer(path: Path, lowercase: bool = True) -> Tokenizer:
    """SigLIP's tokenizer as transformers' SiglipTokenizer runs it: lowercase, punctuation removed,
    whitespace collapsed and stripped, then the sentencepiece model (its own normaliser, a word-
    start marker before every word, the unigram pieces), then end-of-text appended."""
    from sentencepiece import sentencepiece_model_pb2

    spm = sentencepiece_model_pb2.ModelProto()
    spm.ParseFromString(path.read_bytes())
    trainer = spm.trainer_spec
    vocab = [(piece.piece, piece.score) for piece in spm.pieces]
    tok = Tokenizer(models.Unigram(vocab, trainer.unk_id, trainer.byte_fallback))
    steps = [normalizers.Lowercase()] if lowercase else []
    steps += [
        normalizers.Replace(Regex(f"[{re.escape(string.punctuation)}]"), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    if spm.normalizer_spec.precompiled_charsmap:  # sentencepiece's own (NFKC) rules
        steps.append(normalizers.Precompiled(spm.normalizer_spec.precompiled_charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))  # as sentencepiece's remove_extra_whitespaces
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {trainer.eos_piece}", special_tokens=[(trainer.eos_piece, trainer.eos_id)]
    )
    tok.decoder = decoders.Metaspace()
    return tok


def train_tokenizer(captions: Iterable[str], vocab_size: int) -> Tokenizer:
    """A deterministic BERT-style WordPiece tokenizer: the most frequent whole words (ties broken
    alphabetically) plus every character seen, as word-initial and `##` continuation pieces.

    (The `tokenizers` WordPiece trainer depends on hash-map order, so its vocabulary changes from
    one process to the next; a run must tokenise identically on every rank and after a resume.)
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(caption)))
    chars = sorted({c for word in counts for c in word})
    pieces = SPECIALS + chars + [f"##{c}" for c in chars]
    room = max(0, vocab_size - len(pieces))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:room]
    vocab = {piece: i for i, piece in enumerate(pieces + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.decoder = decoders.WordPiece()
    return tok


@dataclass
class TextEncoder:
    tokenizer: Tokenizer
    max_len: int
    pad_id: int | None = None  # None: the tokenizer's [PAD] (0 where it has none)
    pad_to_max_len: bool = False

    def __post_init__(self) -> None:
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)
        if self.pad_id is None:
            self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (B, L) int64, L = the longest text (≤ max_len)."""
        enc = self.tokenizer.encode_batch(texts)
        width = self.max_len if self.pad_to_max_len else max(len(e.ids) for e in enc)
        ids = torch.full((len(enc), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        return ids, mask


def text_encoder(model: ModelConfig, tokenizer: Tokenizer) -> TextEncoder:
    if not model.clip_config:
        return TextEncoder(tokenizer, model.text.max_len)

    from train.model.clip import shapes_from_hf

    shapes = shapes_from_hf(json.loads(model.clip_config))
    if shapes.family == "siglip":  # pools the last position: trained on texts padded to full length
        return TextEncoder(tokenizer, model.text.max_len, shapes.pad_id, pad_to_max_len=True)
    # CLIP pads with its end-of-text token (masked, so only its validity as an id matters)
    return TextEncoder(tokenizer, model.text.max_len, tokenizer.token_to_id("<|endoftext|>") or shapes.pad_id)
