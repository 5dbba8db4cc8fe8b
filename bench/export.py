"""Benchmark: export wall time, and ONNX Runtime CPU throughput of fp32 vs int8 graphs.

For each model — the tiny shapes model and EfficientNet-lite0 + MiniLM-L6 — a trained checkpoint
(`--tiny`, `--edge`; defaults: the runs of `python -m train --config tiny-shapes` and `--config
flickr8k-ft` where the README puts them) is exported with --int8 and timed; where a checkpoint is
missing, one is made from the config (pretrained towers, untrained heads). Then the fp32 and int8
graphs run alternately on the same inputs (images/s, texts/s at batch 1 and 32, medians of
interleaved repeats; texts are Flickr8k captions) and the cosine between their embeddings is taken.
The graphs run in the server's own engine (`runtime.engines.OnnxRuntimeEngine`), whose idle ONNX
Runtime workers sleep: with spinning workers (ONNX Runtime's default), the session that ran last
keeps spinning on the cores while the other runs, and on 2 cores that slowed the interleaved runs
unequally (docs/decisions.md §5).

A second table rebuilds each text graph under the int8 weight schemes ONNX Runtime offers
(`export.quantize.WEIGHTS`, with the export's own attention fusion and outlier split) and times
them side by side with fp32 on this CPU: int8 speed and accuracy depend on the instruction set, so
the machine line names it (docs/decisions.md §5 reads the table per ISA).

    python -m bench.export [--tiny runs/tiny-shapes/best.pt] [--edge runs/flickr8k-ft/best.pt] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import EDGE_CHECKPOINT, captions, isa_tag, machine, median, publish
from export.parity import SENTENCES, compare, text_inputs
from export.pipeline import Exporter, ExportOptions
from export.quantize import EXACT_ON_X86, AttentionShape, quantize_graph
from runtime.bundle import Bundle, load_bundle
from runtime.engines import OnnxRuntimeEngine, session_options
from train.checkpoint import make_payload, save_checkpoint
from train.config import TrainConfig, load_train_config
from train.data.shapes import render, scene
from train.data.tokenizer import TextEncoder, load_tokenizer
from train.model import DualEncoder

BATCH = 32
SINGLES = 16  # batch 1 is timed over this many different items, one call each
SCHEMES = [  # (row label, export.quantize.WEIGHTS key, session config: None = as the runtime sets it here)
    ("s8, 8-bit asymmetric weights, as served on this CPU (shipped)", "s8-8bit-asym", None),
    ("the same with session.x64quantprecision set", "s8-8bit-asym", EXACT_ON_X86),
    ("the same without session.x64quantprecision", "s8-8bit-asym", {}),
    ("s8, 8-bit symmetric weights + session.x64quantprecision", "s8-8bit", EXACT_ON_X86),
    ("s8, 7-bit weights (reduce_range)", "s8-7bit", {}),
    ("u8, 8-bit asymmetric weights", "u8-8bit", {}),
]


class Session:
    """A graph file in a session set up as the server's engine is (all cores, idle workers sleep),
    with the session config entries the runtime sets on this CPU for `graph_config` (the graph's
    GraphSpec.session_config), or else exactly the entries `forced`."""

    def __init__(
        self, path: Path, disabled: list[str], graph_config: dict[str, str], forced: dict[str, str] | None
    ) -> None:
        import onnxruntime as ort

        options = session_options(config=graph_config if forced is None else {})
        for key, value in (forced or {}).items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled,
        )

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def text_feed(text: TextEncoder, batch: list[str]) -> dict[str, np.ndarray]:
    ids, mask = text.encode(batch)  # (B, L), padded to the batch's longest
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


TOWER_SIZES = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}  # their ImageNet resolutions


def fresh_checkpoint(name: str, path: Path) -> None:
    if name == "tiny":  # the tiny-shapes shapes, with the MiniLM vocabulary
        tiny = load_train_config("tiny-shapes").model
        cfg = TrainConfig(model=replace(tiny, text=replace(tiny.text, vocab_size=30522)))
    else:  # the shipped Flickr8k recipe's model: pretrained towers, untrained heads
        model_cfg = load_train_config("flickr8k-ft").model
        kind = name.split("-")[0]  # "efficientnet_lite1-minilm": that image tower at its own size
        if kind in TOWER_SIZES:
            image = replace(model_cfg.image, kind=kind, image_size=TOWER_SIZES[kind])
            model_cfg = replace(model_cfg, image=image)
        cfg = TrainConfig(model=model_cfg)
    torch.manual_seed(0)
    model = DualEncoder(cfg.model)
    cfg = TrainConfig(model=model.cfg)
    tok = load_tokenizer("minilm-l6").to_str()
    save_checkpoint(path, make_payload(cfg, tok, model.state_dict(), None, 0, 0, {}))


def throughput(
    engines: dict[str, OnnxRuntimeEngine], feeds: list[dict[str, np.ndarray]], repeats: int
) -> dict[str, float]:
    """items/s per engine: each repeat runs every feed once per engine, interleaved (fp32, int8,
    fp32, ...); the median repeat counts."""
    items = sum(next(iter(f.values())).shape[0] for f in feeds)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for e in engines.values():
        e.run(feeds[0])  # warm-up
    for _ in range(repeats):
        for k, e in engines.items():
            t0 = time.perf_counter()
            for feed in feeds:
                e.run(feed)
            times[k].append(time.perf_counter() - t0)
    return {k: items / median(v) for k, v in times.items()}


def min_cosine(engines: dict[str, Any], feeds: list[dict[str, np.ndarray]], key: str = "int8") -> float:
    return min(compare(engines[key].run(f)[0], engines["fp32"].run(f)[0]).min_cosine for f in feeds)


def scheme_rows(name: str, bundle: Bundle, text: TextEncoder, texts: list[str], repeats: int) -> list[str]:
    """The text graph under every int8 scheme and fp32, interleaved: int8 / fp32 at batch 1 and
    BATCH, and the min cosine to fp32 over both."""
    t = bundle.manifest.provenance["training_config"]["model"]["text"]
    calibration = [  # what the export calibrates the outlier split on
        {"input_ids": ids, "attention_mask": mask}
        for what, ids, mask in text_inputs(text, t["vocab_size"], BATCH)
        if not what.startswith("random")
    ]
    shape = AttentionShape(t["heads"], t["width"], t["depth"])
    engines: dict[str, Any] = {"fp32": Session(bundle.graph_path("text"), [], {}, None)}
    with tempfile.TemporaryDirectory() as tmp:  # sessions hold their graphs in memory once made
        built: dict[str, tuple[Path, dict[str, Any]]] = {}  # weights -> (int8 graph, what quantize_graph did)
        for weights in dict.fromkeys(w for _, w, _ in SCHEMES):
            path = Path(tmp) / f"{weights}.onnx"
            built[weights] = (
                path,
                quantize_graph(bundle.graph_path("text"), path, shape, calibration, weights),
            )
        for label, weights, config in SCHEMES:
            path, notes = built[weights]
            engines[label] = Session(path, notes["disabled_optimizers"], notes["session_config"], config)
    singles = [text_feed(text, [x]) for x in texts[:SINGLES]]
    batch = [text_feed(text, texts[:BATCH])]
    rate_1, rate_b = throughput(engines, singles, repeats), throughput(engines, batch, repeats)
    return [
        f"| {name} | {label} | {rate_1[label] / rate_1['fp32']:.2f}x | "
        f"{rate_b[label] / rate_b['fp32']:.2f}x | {min_cosine(engines, singles + batch, label):.4f} |"
        for label, _, _ in SCHEMES
    ]


def bench_model(name: str, repeats: int, checkpoint: Path | None) -> tuple[list[str], str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint or Path(tmp) / "model.pt"
        if checkpoint is None:
            fresh_checkpoint(name, ckpt)
        t0 = time.perf_counter()
        Exporter(ExportOptions(ckpt, Path(tmp) / "bundle", int8=True, max_batch=32), lambda _: None).run()
        export_s = time.perf_counter() - t0
        bundle = load_bundle(Path(tmp) / "bundle")
        m = bundle.manifest
        size = m.image.size_px
        pictures = np.stack([np.asarray(render(scene(1, "bench", i), size)) for i in range(BATCH)]).astype(
            np.uint8
        )
        from tokenizers import Tokenizer

        text = TextEncoder(Tokenizer.from_file(str(bundle.path("tokenizer.json"))), m.text.max_len)
        texts = captions(BATCH, SENTENCES)
        rows = []
        for modality in ("image", "text"):
            engines = {  # the server's own engine: CPU provider, all cores, idle workers sleep
                p: OnnxRuntimeEngine(bundle, modality if p == "fp32" else f"{modality}_int8", False, 0)
                for p in ("fp32", "int8")
            }
            for batch in (1, BATCH):
                groups = [range(i, i + batch) for i in range(0, SINGLES if batch == 1 else BATCH, batch)]
                if modality == "image":
                    feeds = [{"pixels": pictures[list(g)]} for g in groups]
                else:
                    feeds = [text_feed(text, [texts[i] for i in g]) for g in groups]
                rate = throughput(engines, feeds, repeats)
                unit = "images/s" if modality == "image" else "texts/s"
                rows.append(
                    f"| {name} | {modality} | {batch} | {rate['fp32']:.1f} | {rate['int8']:.1f} | "
                    f"{rate['int8'] / rate['fp32']:.2f}x | {min_cosine(engines, feeds):.4f} | {unit} |"
                )
        mb = {k: bundle.graph_path(k).stat().st_size / 1e6 for k in m.graphs}
        summary = (
            f"| {name} | {export_s:.1f} | {mb['image']:.1f} / {mb['image_int8']:.1f} | "
            f"{mb['text']:.1f} / {mb['text_int8']:.1f} |"
        )
        return rows, summary, scheme_rows(name, bundle, text, texts, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tiny", type=Path, default=Path("runs/tiny-shapes/best.pt"))
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows, summaries, schemes, timed = [], [], [], []
    for name, ckpt in (("tiny", args.tiny), ("efficientnet-minilm", args.edge)):
        r, summary, scheme = bench_model(name, args.repeats, ckpt if ckpt.is_file() else None)
        rows += r
        summaries.append(summary)
        schemes += scheme
        timed.append(
            f"{name} `{ckpt}`" if ckpt.is_file() else f"{name}: a fresh model of its config ({ckpt} absent)"
        )
    lines = [
        f"- Command: `python -m bench.export {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; `runtime.engines.OnnxRuntimeEngine` as served: CPU provider, all "
        "cores, idle workers sleep (`--cpu-spin` off)",
        f"- Checkpoints: {'; '.join(timed)} (docs/results.md)",
        f"- Medians of {args.repeats} interleaved repeats (fp32, int8, fp32, ...) after a warm-up. "
        f"Texts: the first {BATCH} Flickr8k captions (built-in sentences without the data); "
        f"images: rendered shapes scenes. Batch 1 = {SINGLES} different items, one call each; "
        f"batch {BATCH} = one call, texts padded to the longest. Cosine: min over those items of "
        "int8 vs fp32 embeddings.",
        "",
        "| model | graph | batch | fp32 items/s | int8 items/s | int8 / fp32 | min cosine | unit |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "| model | export wall time, with int8 and parity (s) | image graph MB fp32 / int8 "
        "| text graph MB fp32 / int8 |",
        "|---|---:|---:|---:|",
        *summaries,
        "",
        f"The text graph under each int8 weight scheme on this CPU (same items, all {len(SCHEMES)} sessions "
        "interleaved; the first row is what the export ships, as the runtime opens it here):",
        "",
        f"| model | int8 scheme | int8 / fp32, batch 1 | int8 / fp32, batch {BATCH} | min cosine |",
        "|---|---|---:|---:|---:|",
        *schemes,
    ]
    publish(f"export_{isa_tag()}", lines, args.record)  # one block per ISA: int8 speed depends on it


if __name__ == "__main__":
    main()
