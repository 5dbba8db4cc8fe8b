"""The `--tensorrt` export stage: engines for this GPU, parity-checked against ONNX Runtime fp32
and checked to hold the asked precision; records go into the manifest (see runtime/tensorrt.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.parity import compare, image_inputs, merge, text_inputs
from runtime.bundle import Manifest, ParityRecord
from runtime.tensorrt import (
    MIN_COSINE,
    TensorRTEngine,
    build_engine,
    engine_name,
    engine_precisions,
    engine_record,
    gpu_identity,
    import_tensorrt,
    profile_shapes,
)


def build_engines(manifest: Manifest, tmp: Path, opts: Any, progress: Callable[[str], None]) -> Manifest:
    from tokenizers import Tokenizer

    from train.data.tokenizer import TextEncoder

    trt = import_tensorrt()
    gpu, cc = gpu_identity()
    precision = "fp16" if opts.fp16 else "fp32"
    text = TextEncoder(Tokenizer.from_file(str(tmp / manifest.text.tokenizer)), manifest.text.max_len)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {
        "image": [{"pixels": p} for _, p in image_inputs(manifest.image.size_px, manifest.max_batch)],
        "text": [
            {"input_ids": i, "attention_mask": m}
            for _, i, m in text_inputs(text, text.vocab_size, manifest.max_batch)
        ],
    }
    engines, parity = list(manifest.engines), list(manifest.parity)
    for key in ("image", "text"):
        spec = manifest.graphs[key]
        profile = profile_shapes(
            {t.name: t.shape for t in spec.inputs}, manifest.max_batch, manifest.text.max_len
        )
        file = engine_name(manifest.fingerprint, key, trt.__version__, gpu, cc, precision, profile)
        progress(f"tensorrt {key}: building {precision} engine for {gpu} (sm {cc})")
        build_engine(tmp / spec.file, tmp / file, profile, precision, tmp / "engines" / "timing.cache")
        held = engine_precisions(tmp / file)
        if precision == "fp16" and "fp16" not in held:
            raise RuntimeError(
                f"{key} engine holds no fp16 layers ({sorted(held)}): the fp16 build did not take"
            )
        session = ort.InferenceSession(str(tmp / spec.file), providers=["CPUExecutionProvider"])
        names = [t.name for t in spec.outputs]
        engine = TensorRTEngine(tmp / file, [t.name for t in spec.inputs], names, precision)
        parts = []
        for feed in feeds[key]:
            want = session.run(None, feed)
            got = engine.run(feed)
            parts += [compare(g, w) for g, w in zip(got, want, strict=True)]
        engine.close()
        result = merge(parts)
        ok = result.passes(None, MIN_COSINE)
        parity.append(ParityRecord(f"{key}_trt_{precision}", f"tensorrt {trt.__version__} on {gpu}",
                                   "onnxruntime fp32", "parity inputs of the fp32 check", result.n,
                                   result.max_abs_diff, result.min_cosine, ok))  # fmt: skip
        progress(f"parity   {key} tensorrt {precision}: min cosine {result.min_cosine:.5f}")
        if not ok:
            raise RuntimeError(f"{key} TensorRT engine: min cosine {result.min_cosine:.4f} < {MIN_COSINE}")
        engines.append(engine_record(file, key, gpu, cc, precision, profile))
    return replace(manifest, engines=engines, parity=parity)
