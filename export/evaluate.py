"""`python -m export.evaluate BUNDLE [--split test] [--int8] [--data JSONL] [--target HOST:PORT]`:
Recall@1/5/10 both ways and RSUM of a bundle as its users reach it — the image files and raw
captions sent to a real server (`python -m runtime serve`, started here unless `--target` names
one), which decodes, crops, cleans, tokenises and embeds them as it serves everyone.

The split is read as the bundle's training run read it (provenance.training_config: the captions
file, image root and held-out list), so `--split test` is the run's held-out test split; a bundle
whose run held nothing out is refused for it (its test images were trained on). The protocol is
train/evaluate.py's: an image hits when any of its captions ranks in its top K; a caption hits
when its image does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.bundle import load_bundle
from runtime.client import TesseraClient
from runtime.launch import ServerProcess
from train.config import TrainConfig, from_dict
from train.data.captions import RetrievalSet
from train.data.datasets import InputPolicy, make_source
from train.evaluate import recall_at_k, unseen_split

BATCH_ITEMS = 32  # items per Embed request


def split_of(bundle_dir: Path, split: str, data: Path | None) -> tuple[RetrievalSet, Path]:
    """The split's images (with the folder they are in) and raw captions, as the bundle's run read
    it (`train.data.datasets.make_source`), or of another captions file."""
    trained = from_dict(TrainConfig, load_bundle(bundle_dir).manifest.provenance.get("training_config", {}))
    cfg = trained.data
    if data is not None:  # another file: its own splits, nothing held out of them
        cfg = replace(cfg, source="jsonl", jsonl=str(data), image_root="", held_out="")
    else:
        unseen_split(cfg, split, str(bundle_dir))
    # raw captions: the server applies the bundle's own clean-up, as it does for every caller
    source = make_source(cfg, split, trained.model.image.image_size, InputPolicy(clean_captions=False))
    assert source.loader.root is not None  # a JSONL source: images are files
    return source.retrieval_set(), source.loader.root


def batches(values: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def served_recalls(client: TesseraClient, rset: RetrievalSet, image_root: Path) -> dict[str, float]:
    images = np.concatenate(
        [client.embed_images([(image_root / name).read_bytes() for name in chunk])
         for chunk in batches(rset.images, BATCH_ITEMS)]
    )  # fmt: skip  # (I, d)
    captions = np.concatenate([client.embed_texts(chunk) for chunk in batches(rset.captions, BATCH_ITEMS)])
    similarity = torch.from_numpy(images.astype(np.float32) @ captions.astype(np.float32).T)  # (I, C)
    return recall_at_k(similarity, torch.tensor(rset.caption_image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--split", default="test", help="test (the run's held-out split) or dev")
    parser.add_argument("--int8", action="store_true", help="serve the int8 graphs (checked at start)")
    parser.add_argument("--data", type=Path, help="another captions JSONL (images under images/ beside it)")
    parser.add_argument("--target", help="a running server to ask instead of starting one (HOST:PORT)")
    args = parser.parse_args(argv)
    try:
        rset, root = split_of(args.bundle, args.split, args.data)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = None
    if args.target is None:
        batch = str(min(32, load_bundle(args.bundle).manifest.max_batch))  # the server's default, or less
        int8 = ("--int8", "on") if args.int8 else ()
        server = ServerProcess(args.bundle, "--max-batch-size", batch, *int8)
    try:
        client = server.client(timeout_s=600) if server else TesseraClient(args.target, 600)
        with client:
            metrics = served_recalls(client, rset, root)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps({"bundle": str(args.bundle), "split": args.split, "int8": args.int8,
                      "images": len(rset.images), "captions": len(rset.captions),
                      **{k: round(v, 2) for k, v in metrics.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
