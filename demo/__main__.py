"""`python -m demo` (what `make demo` runs): the main job on the embedded default, end to end.

1. train the `tiny-shapes` model from scratch on this CPU (progress bar)       runs/demo/model
2. export it to a bundle, parity-checked against torch                          runs/demo/bundle
3. start the server (ONNX Runtime, CPU) with a data directory                   runs/demo/data
4. embed texts and images; index the validation images in a collection; search it by text; look
   up codebook codes; measure what the server does at batch and under concurrency
5. print a report, draw runs/demo/retrievals.png, stop the server with SIGTERM, exit 0;
   the validation images are left in runs/demo/images for the README's commands

Re-running reuses the trained model and the bundle (delete runs/demo to start over). `--smoke`
trains a few steps of a smaller model: the CI's end-to-end check that the pipeline holds together.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from demo.grid import draw_grid
from runtime.bundle import load_bundle
from runtime.client import TesseraClient
from runtime.launch import ServerProcess
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from train.data.shapes import CELLS, Shape, captions, phrase, render, scene

SMOKE = [
    "optim.max_steps=12", "optim.batch_size=16", "data.shapes_train_images=200", "data.shapes_val_images=60",
    "run.eval_every_steps=12", "model.image.depth=1", "model.text.depth=1", "data.workers=0",
]  # fmt: skip
ROUTED_NPROBE = 16  # of the tiny model's 64 codebook lists
HANDWRITTEN = [
    Shape("circle", "red", "large", CELLS.index("middle")),
    Shape("square", "blue", "small", CELLS.index("top left")),
    Shape("triangle", "yellow", "medium", CELLS.index("bottom right")),
    Shape("diamond", "white", "large", CELLS.index("top")),
]


def say(msg: str) -> None:
    print(msg, flush=True)


def train_model(out: Path, smoke: bool) -> tuple[Path, float]:
    from train.config import load_train_config
    from train.loop import train

    ckpt = out / "model" / "best.pt"
    if ckpt.is_file():
        say(f"[1/5] train   reusing {ckpt} (delete runs/demo to retrain)")
        return ckpt, 0.0
    say("[1/5] train   tiny-shapes from scratch on this CPU" + (" (smoke: a few steps)" if smoke else ""))
    overrides = [*SMOKE] if smoke else []
    t0 = time.perf_counter()
    metrics = train(load_train_config("tiny-shapes", overrides), out / "model")
    took = time.perf_counter() - t0
    say(
        f"        done in {took:.0f} s; validation: "
        + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if "r" in k)
    )
    return ckpt, took


def export_bundle(ckpt: Path, out: Path) -> Path:
    from export.pipeline import Exporter, ExportOptions

    bundle = out / "bundle"
    if reusable(bundle, ckpt):
        say(f"[2/5] export  reusing {bundle}")
    else:
        say(f"[2/5] export  {ckpt} -> {bundle}")
        Exporter(
            ExportOptions(ckpt, bundle, max_batch=64, int8=True, force=True), lambda m: say(f"        {m}")
        ).run()
    for p in load_bundle(bundle).manifest.parity:
        say(f"        parity {p.graph:<10} vs {p.reference:<16} max|Δ| {p.max_abs_diff:.1e}  "
            f"min cos {p.min_cosine:.6f}  n={p.n}  {'ok' if p.passed else 'FAILED'}")  # fmt: skip
    return bundle


def reusable(bundle: Path, ckpt: Path) -> bool:
    """A bundle newer than the checkpoint that this version can still load (else: export again)."""
    from runtime.errors import BundleError

    manifest = bundle / "manifest.json"
    if not manifest.is_file() or manifest.stat().st_mtime <= ckpt.stat().st_mtime:
        return False
    try:
        load_bundle(bundle)
    except BundleError:
        return False
    return True


def match_level(described: list[Shape], scene_shapes: list[Shape]) -> int:
    """2: the image holds every described shape; 1: every described colour and kind; else 0."""
    if all(s in scene_shapes for s in described):
        return 2
    have = {(s.colour, s.kind) for s in scene_shapes}
    return 1 if all((s.colour, s.kind) in have for s in described) else 0


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument(
        "--smoke", action="store_true", help="a few training steps: the CI's end-to-end check"
    )
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    ckpt, _ = train_model(args.out, args.smoke)
    try:
        bundle_dir = export_bundle(ckpt, args.out)
    except Exception as e:  # one clear line, no traceback, as `python -m export` says it
        print(f"error: export failed: {e}", file=sys.stderr)
        return 1
    manifest = load_bundle(bundle_dir).manifest
    size = manifest.image.size_px
    from train.checkpoint import load_checkpoint

    data_cfg = load_checkpoint(ckpt)["config"].data  # the validation split the model was judged on
    n_val, seed, val_split = data_cfg.shapes_val_images, data_cfg.shapes_seed, data_cfg.val_split

    say("[3/5] serve   python -m runtime serve (ONNX Runtime, CPU)")
    server = ServerProcess(
        bundle_dir, "--max-batch-size", "64", "--max-wait-ms", "5", data_dir=args.out / "data"
    )
    try:
        with server.client(timeout_s=120) as client:
            report = run_session(client, n_val, seed, val_split, size, args.out)
    finally:
        code = server.stop()
    say(f"[5/5] stop    server drained and exited with status {code}")
    say(report)
    say(f"picture: {args.out / 'retrievals.png'}   total {time.perf_counter() - t_start:.0f} s")
    return 0 if code == 0 else 1


def run_session(client: TesseraClient, n_val: int, seed: int, split: str, size: int, out: Path) -> str:
    info = client.info()
    say(f"        model {info.fingerprint[:12]}  d={info.embed_dim}  K={info.codebook_size}  "
        f"engines: {', '.join(f'{e.modality} {e.backend}' for e in info.engines)}")  # fmt: skip
    say("[4/5] use     embed, index, search, lookup")
    scenes = [scene(seed, split, i) for i in range(n_val)]
    images = [render(s, size) for s in scenes]
    folder = out / "images"  # the same pictures as files: what the README's commands index and show
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / f"{split}-{i:04d}.png")
    texts = ["a large red circle in the middle", "two small squares"]
    got = client.embed([pb.Item(text=t) for t in texts] + [pb.Item(image=png(images[0]))], top_codes=3)
    for name, v, codes in zip([*texts, f"image {split}/0 (PNG)"], got.vectors, got.codes, strict=True):
        say(f"        embed {name!r:<38} |v|={np.linalg.norm(v):.3f}  codes {[c for c, _ in codes]}")

    existing = {c.name for c in client.list_collections()}
    if "shapes" in existing:
        client.drop_collection("shapes")
    client.create_collection("shapes")
    t0 = time.perf_counter()
    for s in range(0, n_val, 50):
        records = [(f"{split}/{i}", png(images[i]), {"caption": captions(scenes[i], 1, f"c/{i}")[0]})
                   for i in range(s, min(n_val, s + 50))]  # fmt: skip
        client.upsert("shapes", records)
    index_rate = n_val / (time.perf_counter() - t0)
    say(
        f"        indexed {n_val} validation images (PNG) into collection 'shapes': {index_rate:.0f} images/s"
    )

    targets = [0, 1, 2, 3]  # captions written for these images, in another wording
    queries = [(phrase(s, 0), [s]) for s in HANDWRITTEN]
    queries += [(captions(scenes[i], 3, f"q/{i}")[2], scenes[i]) for i in targets]
    lines, rows, first, top5 = [], [], [0, 0], [0, 0]
    for query, described in queries:
        hits = client.search("shapes", query, top_k=5)
        routed = client.search("shapes", query, top_k=5, nprobe=ROUTED_NPROBE)
        code = client.lookup([pb.Item(text=query)], top_k=1)[0][0][0]
        levels = [match_level(described, scenes[int(h[0].split("/")[1])]) for h in hits]
        for k in (0, 1):
            first[k] += levels[0] > k
            top5[k] += any(level > k for level in levels)
        overlap = len({h[0] for h in hits} & {h[0] for h in routed})
        lines.append(
            f"  query: {query!r}  (code {code}; nprobe {ROUTED_NPROBE} finds {overlap}/5 of the exact top 5)"
        )
        for rank, ((hit_id, score, payload), level) in enumerate(
            zip(hits[:3], levels, strict=False), start=1
        ):
            lines.append(f"    {rank}. {score:.3f} {' ~✓'[level]} {hit_id:<7} {payload['caption']}")
        rows.append(
            (query, [(images[int(h[0].split("/")[1])], h[1], lv) for h, lv in zip(hits, levels, strict=True)])
        )
    draw_grid(rows, out / "retrievals.png")

    batch_texts = [captions(s, 1, "t")[0] for s in scenes[:64]]
    t0 = time.perf_counter()
    client.embed_texts(batch_texts)
    batch_rate = len(batch_texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda t: client.embed_texts([t]), batch_texts * 2))
    single_rate = 2 * len(batch_texts) / (time.perf_counter() - t0)
    return "\n".join([
        "", "== report " + "=" * 70, *lines, "",
        f"  text->image over {len(queries)} queries: the first image holds every described shape for "
        f"{first[1]} (its colours and kinds for {first[0]}); one of the top 5 does for {top5[1]} ({top5[0]})",
        "  (✓ every described shape, all attributes; ~ its colours and kinds, not all sizes or places)",
        f"  throughput: {batch_rate:.0f} texts/s in one 64-text request; {single_rate:.0f} texts/s as 16 "
        f"concurrent single-text requests (batched by the server); indexing {index_rate:.0f} images/s",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
