"""A bundle's engines called directly, without a server: what a batch worker runs
(runtime/batch.py) and what its throughput is measured against (bench/batch.py).

    encoder = Encoder(load_bundle(path), ServeConfig(cpu_threads=1))
    out = encoder.encode(items)      # items: runtime.bulk.Source, in any mix of texts and images
    out.vectors  # (n, d) float32, L2-normalised;  out.codes  # (n, k) top codes;  out.skipped

The preprocessing (ImageDecoder, TextTokenizer) and the engine calls (runtime/embedder.py's
runners: images in calls of the measured size, texts grouped by length) are the server's own, so a
vector from here equals the server's for the same item. An item that cannot be read or decoded is
skipped with its reason; the rest go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.bulk import BadItem, Source
from runtime.bundle import Bundle
from runtime.config import ServeConfig
from runtime.embedder import image_runner, text_runner, top_codes
from runtime.engines import open_engines
from runtime.errors import InvalidInput
from runtime.preprocess import ImageDecoder, TextTokenizer


@dataclass
class Encoded:
    """The answers for some items, in their order, less those skipped."""

    ids: list[str]
    vectors: np.ndarray  # (n, d) float32
    codes: np.ndarray  # (n, k) int32, best first
    payloads: list[str]  # JSON, one per item
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item name, reason)


class Encoder:
    def __init__(self, bundle: Bundle, cfg: ServeConfig, top_k: int = 1) -> None:
        m = bundle.manifest
        self.fingerprint, self.embed_dim, self.top_k = m.fingerprint, m.embed_dim, min(top_k, m.codebook_size)
        self.batch = min(cfg.max_batch_size, m.max_batch)
        self.engines = open_engines(bundle, cfg)
        self.decoder = ImageDecoder.for_bundle(bundle, cfg.max_image_pixels)
        self.tokenizer = TextTokenizer(bundle, cfg.max_text_chars)
        calls = self.engines.calls
        self.run_images = image_runner(self.engines.image, calls["image"], None)
        self.run_texts = text_runner(self.engines.text, calls["text"], self.tokenizer, None, None)

    def encode(self, items: Sequence[Source]) -> Encoded:
        prepared: dict[str, list[tuple[int, np.ndarray]]] = {"image": [], "text": []}  # (index, input)
        skipped: list[tuple[str, str]] = []
        for i, s in enumerate(items):
            try:
                if s.image is not None:
                    prepared["image"].append((i, self.decoder.decode(s.read_image())))  # (S, S, 3) uint8
                else:
                    prepared["text"].append((i, self.tokenizer.encode(s.text or "")))  # (L,) int64
            except (BadItem, InvalidInput) as e:
                skipped.append((s.name, e.reason if isinstance(e, BadItem) else str(e)))
        outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (embedding, code scores)
        for modality, run in (("image", self.run_images), ("text", self.run_texts)):
            rows = prepared[modality]
            for start in range(0, len(rows), self.batch):
                chunk = rows[start : start + self.batch]
                for (i, _), out in zip(chunk, run([x for _, x in chunk]), strict=True):
                    outputs[i] = out
        order = sorted(outputs)
        d, k = self.embed_dim, self.top_k
        vectors = np.stack([outputs[i][0] for i in order]) if order else np.zeros((0, d), np.float32)
        scores = np.stack([outputs[i][1] for i in order]) if order else np.zeros((0, k), np.float32)
        codes, _ = top_codes(scores, k)  # (n, k)
        return Encoded(
            ids=[items[i].id for i in order],
            vectors=vectors.astype(np.float32, copy=False),  # (n, d)
            codes=codes.astype(np.int32),
            payloads=[items[i].payload_json() for i in order],
            skipped=skipped,
        )
