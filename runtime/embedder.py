"""The model as the server sees it: a bundle's engines behind two batchers (image, text), with
preprocessing on a thread pool and the codebook in memory. No gRPC here (see runtime/server.py).

    embedder = Embedder(load_bundle(path), cfg)
    embedder.load()    # open (int8: check) and warm up the engines; blocking, off the event loop
    embedder.start()   # the batchers, on the running loop
    out = await embedder.embed([Text("a dog"), EncodedImage(jpeg)], deadline_s)
    out.embeddings  # (N, d) float32, L2-normalised;  out.code_scores  # (N, K)

Items of one request are preprocessed concurrently (decode, tokenise), then submitted to their
modality's batcher; a bad item fails the request with InvalidInput naming its index. Images over
`large_image_pixels` decode on a thread of their own, so a few huge ones queue behind each other
rather than in front of everyone's ordinary images.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.admission import image_size
from runtime.batcher import Batcher, Result
from runtime.bundle import Bundle
from runtime.config import ServeConfig
from runtime.engines import Engine, EngineSet, open_engines, zero_feeds
from runtime.errors import InvalidInput
from runtime.metrics import Metrics
from runtime.preprocess import ImageDecoder, TextTokenizer
from runtime.textsplit import CallCost, split_by_length, text_probe


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class EncodedImage:
    data: bytes  # JPEG, PNG or WebP


@dataclass(frozen=True)
class Pixels:
    width: int
    height: int
    rgb: bytes  # (height, width, 3) uint8


Content = Text | EncodedImage | Pixels
Runner = Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]
CallObserver = Callable[[int, int], None]  # (rows, padded length in tokens; 0 for images) per engine call


@dataclass(frozen=True)
class EngineResult:
    """What the engines made of a request's items (the service turns it into its `Embedded`)."""

    embeddings: np.ndarray  # (N, d) float32
    code_scores: np.ndarray  # (N, K) float32
    queue_ms: float  # the slowest item's
    preprocess_ms: float
    inference_ms: float
    tokens: int = 0  # the texts' tokens, [CLS] and [SEP] included


class Embedder:
    def __init__(self, bundle: Bundle, cfg: ServeConfig, metrics: Metrics | None = None) -> None:
        m = bundle.manifest
        if cfg.max_batch_size > m.max_batch:
            raise ValueError(
                f"max_batch_size {cfg.max_batch_size} is over the bundle's max_batch {m.max_batch} "
                f"(re-export with --max-batch {cfg.max_batch_size})"
            )
        self.bundle, self.cfg = bundle, cfg
        self.fingerprint, self.embed_dim = m.fingerprint, m.embed_dim
        self.codebook = np.load(bundle.path(m.codebook)).astype(np.float32)  # (K, d)
        self.decoder = ImageDecoder.for_bundle(bundle, cfg.max_image_pixels)
        self.tokenizer = TextTokenizer(bundle, cfg.max_text_chars)
        self.pool = ThreadPoolExecutor(max_workers=cfg.preprocess_threads, thread_name_prefix="preprocess")
        self.large_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess-large")
        self.metrics = metrics
        self.engines: EngineSet | None = None
        self.text_cost: CallCost | None = None  # the text engine's cost per call (None: never split)
        self.image: Batcher[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None
        self.text: Batcher[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def load(self) -> None:
        """Opens the engines and warms each up with the largest call it will run (blocking; call
        off the loop). Opening measures each engine's items per call and checks int8 engines on
        this CPU (runtime/engines.py)."""
        engines = open_engines(self.bundle, self.cfg)
        if self.metrics:
            self.metrics.engines_opened(engines.checks, set(engines.notes))
        for modality, engine in (("image", engines.image), ("text", engines.text)):
            engine.run(zero_feeds(self.bundle, modality, engines.calls[modality]))
        if not self.cfg.whole_text_batches:
            text, calls = engines.text, engines.calls["text"]
            self.text_cost = CallCost(lambda: text.name, text_probe(text.run), calls, self.tokenizer.max_len)
            self.text_cost.call_tokens()  # measured now, off the serving path
        self.engines = engines

    def start(self) -> None:
        """Starts the batchers (on the running loop) once `load` has finished."""
        assert self.engines is not None, "load() first"
        cfg = self.cfg
        kw = dict(max_batch_size=cfg.max_batch_size, max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue)
        image_obs = self.metrics.observer("image") if self.metrics else None
        text_obs = self.metrics.observer("text") if self.metrics else None
        image_run = image_runner(
            self.engines.image, self.engines.calls["image"], image_obs.engine_call if image_obs else None
        )
        self.image = Batcher("image", image_run, **kw, observer=image_obs)
        budget = cfg.max_batch_tokens or cfg.max_batch_size * self.tokenizer.max_len
        text_run = text_runner(
            self.engines.text, self.engines.calls["text"], self.tokenizer, self.text_cost,
            text_obs.engine_call if text_obs else None,
        )  # fmt: skip
        self.text = Batcher("text", text_run, **kw, cost=len, max_batch_cost=budget,
                            lookahead=cfg.batch_lookahead, observer=text_obs)  # fmt: skip
        self.image.start()
        self.text.start()

    async def close(self) -> None:
        for batcher in (self.image, self.text):
            if batcher is not None:
                await batcher.close()
        self.pool.shutdown(wait=False)
        self.large_pool.shutdown(wait=False)

    # -- serving ----------------------------------------------------------------------------------

    async def embed(self, items: list[Content], deadline_s: float | None) -> EngineResult:
        assert self.image is not None and self.text is not None, "start() first"
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if all(self._cheap(item) for item in items):  # no task per item on the hot path
            prepared = [self._prepare(i, item) for i, item in enumerate(items)]
        else:
            prepared = await asyncio.gather(
                *(self._prepare_async(loop, i, item) for i, item in enumerate(items))
            )
        preprocess_ms = 1e3 * (time.perf_counter() - t0)
        texts = [i for i, item in enumerate(items) if isinstance(item, Text)]
        images = [i for i, item in enumerate(items) if not isinstance(item, Text)]
        jobs = []
        if texts:
            jobs.append(self.text.submit([prepared[i] for i in texts], deadline_s))
        if images:
            jobs.append(self.image.submit([prepared[i] for i in images], deadline_s))
        outcomes = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
        results: list[Result[tuple[np.ndarray, np.ndarray]] | None] = [None] * len(items)
        for indices, batch in zip([x for x in (texts, images) if x], outcomes, strict=True):
            for i, r in zip(indices, batch, strict=True):
                results[i] = r
        done = [r for r in results if r is not None]
        return EngineResult(
            embeddings=_rows([r.value[0] for r in done]),  # (N, d)
            code_scores=_rows([r.value[1] for r in done]),  # (N, K)
            queue_ms=max(r.queue_ms for r in done),
            preprocess_ms=preprocess_ms,
            inference_ms=max(r.inference_ms for r in done),
            tokens=sum(len(prepared[i]) for i in texts),
        )

    def _cheap(self, item: Content) -> bool:
        """A text, or pixels already at size: prepared inline (cheaper than a hop to the pool)."""
        size = self.decoder.size_px
        return isinstance(item, Text) or (isinstance(item, Pixels) and item.width == item.height == size)

    async def _prepare_async(self, loop: asyncio.AbstractEventLoop, index: int, item: Content) -> np.ndarray:
        """Cheap items inline; decoding and resizing on the pool."""
        if self._cheap(item):
            return self._prepare(index, item)
        w, h = image_size(item.data) if isinstance(item, EncodedImage) else (item.width, item.height)
        pool = self.large_pool if w * h > self.cfg.large_image_pixels else self.pool
        return await loop.run_in_executor(pool, self._prepare, index, item)

    def _prepare(self, index: int, item: Content) -> np.ndarray:
        try:
            if isinstance(item, Text):
                return self.tokenizer.encode(item.text)  # (L,) int64
            if isinstance(item, EncodedImage):
                return self.decoder.decode(item.data)  # (S, S, 3) uint8
            return self.decoder.from_pixels(item.width, item.height, item.rgb)  # (S, S, 3) uint8
        except InvalidInput as e:
            raise InvalidInput(f"item {index}: {e}") from e

    # -- the codebook -----------------------------------------------------------------------------

    def vector_scores(self, vectors: np.ndarray) -> np.ndarray:
        """(N, d) vectors -> (N, K) cosine to each code (vectors are L2-normalised first)."""
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
        return (vectors / np.maximum(norms, 1e-12)) @ self.codebook.T  # (N, K)

    def engine_info(self) -> list[tuple[str, Engine]]:
        assert self.engines is not None
        return [("image", self.engines.image), ("text", self.engines.text)]


def _rows(rows: list[np.ndarray]) -> np.ndarray:
    """N rows -> (N, ...); one row (most requests) as a view, without np.stack's copy."""
    return rows[0][np.newaxis] if len(rows) == 1 else np.stack(rows)


def top_codes(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) scores -> (ids (N, k), scores (N, k)), best first."""
    k = min(k, scores.shape[1])
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return ids, np.take_along_axis(scores, ids, axis=1)


def image_runner(engine: Engine, per_call: int, on_call: CallObserver | None) -> Runner:
    """One batch of images -> engine calls of at most `per_call` images (runtime/footprint.py)."""

    def run(pixels: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(0, len(pixels), per_call):
            chunk = pixels[i : i + per_call]
            emb, scores = engine.run({"pixels": np.stack(chunk)})  # (n, S, S, 3) -> (n, d), (n, K)
            if on_call:
                on_call(len(chunk), 0)
            out += zip(emb, scores, strict=True)
        return out

    return run


def text_runner(
    engine: Engine,
    per_call: int,
    tokenizer: TextTokenizer,
    cost: CallCost | None,
    on_call: CallObserver | None,
) -> Runner:
    """One batch of token rows -> one engine call per group of similar lengths (textsplit.py), each
    of at most `per_call` rows (runtime/footprint.py)."""

    def run(rows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # row index -> (embedding, code scores)
        call_tokens = cost.call_tokens() if cost else math.inf
        groups = split_by_length([len(r) for r in rows], call_tokens)
        for group in (g[i : i + per_call] for g in groups for i in range(0, len(g), per_call)):
            ids, mask = tokenizer.pad([rows[i] for i in group])  # (G, L) each, L = the group's longest
            emb, scores = engine.run({"input_ids": ids, "attention_mask": mask})  # (G, d), (G, K)
            if on_call:
                on_call(*ids.shape)
            for i, e, s in zip(group, emb, scores, strict=True):
                out[i] = (e, s)
        return [out[i] for i in range(len(rows))]

    return run
