"""A CLIP checkpoint (Hugging Face layout, random weights: no pretrained CLIP can be had here)
through the whole chain: `model.init` starts the dual encoder exactly at the checkpoint's model,
fine-tuning with `codis` runs through the CLI and resumes exactly, the run exports (fp32 and int8
within the parity gates), and a server answers zero-shot classification by searching a collection
of label texts with an image, over gRPC, with the same vectors over HTTP."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer

from export.pipeline import Exporter, ExportOptions
from runtime.launch import ServerProcess
from tests.conftest import REPO_ROOT
from tests.helpers import SMALL, losses, pictures, random_clip, small, texts
from train.checkpoint import load_model
from train.data.tokenizer import text_encoder
from train.model import DualEncoder
from train.model.dual import resolve_config

transformers = pytest.importorskip("transformers", reason="writes the CLIP checkpoint (the dev extra)")
pytestmark = pytest.mark.integration

LABELS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "the dog on the cat"]


def cli_train(out: Path, init: Path, *extra: str) -> None:
    """`python -m train` as a user runs it; "--resume" continues OUT/last.pt with the same command."""
    sets = [*SMALL, f"model.init={init}", "objective.preset=codis", "optim.max_steps=4"]
    sets += [e for e in extra if e != "--resume"]
    cmd = [sys.executable, "-m", "train", "--config", "tiny-shapes", "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    if "--resume" in extra:
        cmd += ["--resume", str(out / "last.pt")]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_clip_checkpoint_fine_tunes_exports_and_answers_zero_shot(tmp_path: Path) -> None:
    ckpt = random_clip(tmp_path / "clip")
    reference = transformers.CLIPModel.from_pretrained(ckpt).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(ckpt)

    # 1. model.init: the dual encoder starts as the checkpoint's own model, temperature included
    cfg = resolve_config(small(f"model.init={ckpt}").model)
    model = DualEncoder(cfg).eval()
    pixels = torch.rand(3, 3, 32, 32)  # RGB in [0, 1]
    mean, std = torch.tensor(cfg.image.mean).view(1, 3, 1, 1), torch.tensor(cfg.image.std).view(1, 3, 1, 1)
    texts = text_encoder(cfg, Tokenizer.from_file(str(ckpt / "tokenizer.json")))
    ids, mask = texts.encode(LABELS)
    want_ids = tokenizer(LABELS, padding="longest", truncation=True, max_length=cfg.text.max_len)
    assert ids.tolist() == want_ids["input_ids"]
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, pixel_values=(pixels - mean) / std)
        image, text = model.encode_image(pixels).global_, model.encode_text(ids, mask).global_
    assert (image - want.image_embeds).abs().max() <= 1e-5 and (text - want.text_embeds).abs().max() <= 1e-5
    assert math.isclose(float(model.temp), math.exp(-float(reference.logit_scale)), rel_tol=1e-6)

    # 2. fine-tuning through the CLI, with codis and with the sigmoid loss; stopped and resumed, a
    # run repeats the straight one
    for preset in ("codis", "sigmoid"):
        straight, resumed = tmp_path / f"straight-{preset}", tmp_path / f"resumed-{preset}"
        cli_train(straight, ckpt, f"objective.preset={preset}")
        cli_train(resumed, ckpt, f"objective.preset={preset}", "run.stop_after_steps=2")
        cli_train(resumed, ckpt, f"objective.preset={preset}", "--resume")
        assert sorted(losses(resumed)) == [1, 2, 3, 4]
        assert all(abs(losses(resumed)[s] - losses(straight)[s]) < 1e-6 for s in range(1, 5))
        saved = torch.load(straight / "best.pt", weights_only=True)
        assert {"rsum", "i2t_r1"} <= set(saved["metrics"])
        assert ("logit_bias" in saved["model"]) == (preset == "sigmoid")
    straight = tmp_path / "straight-codis"

    # 3. export, fp32 and int8, within the parity gates (the exporter refuses otherwise)
    bundle = tmp_path / "bundle"
    Exporter(ExportOptions(straight / "best.pt", bundle, max_batch=32, int8=True), lambda _: None).run()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert all(p["passed"] for p in manifest["parity"]) and {"image_int8", "text_int8"} <= set(
        manifest["graphs"]
    )

    # 4. serve: zero-shot classification is a search of the label texts by an image
    trained, _ = load_model(straight / "best.pt")
    picture = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(picture).save(png, "PNG")
    with torch.no_grad():
        label_vecs = trained.encode_text(*text_encoder(trained.cfg, texts.tokenizer).encode(LABELS)).global_
        image_vec = trained.encode_image(
            torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
        ).global_
    expected = LABELS[int((label_vecs @ image_vec.T).argmax())]
    server = ServerProcess(bundle, "--max-wait-ms", "5")
    try:
        with server.client() as client, httpx.Client(base_url=server.http, timeout=30) as http:
            client.create_collection("labels")
            client.upsert("labels", [(f"label{i}", t, {"label": t}) for i, t in enumerate(LABELS)])
            hits = client.search("labels", png.getvalue(), top_k=len(LABELS))
            assert hits[0][2]["label"] == expected
            grpc_text = client.embed_texts(LABELS[:1])
            reply = http.post("/v1/embeddings", json={"input": LABELS[:1], "model": "tessera"})
            assert reply.status_code == 200, reply.text
            assert np.array_equal(np.asarray(reply.json()["data"][0]["embedding"], np.float32), grpc_text[0])
            assert np.abs(grpc_text[0] - label_vecs[0].numpy()).max() <= 1e-4  # served = trained model
    finally:
        assert server.stop() == 0


def captioned(folder: Path, n: int) -> Path:
    """folder/captions.jsonl: `n` shapes pictures of other shapes than square (40 x 24 px, so a crop
    policy matters), each with two raw captions (capitals and punctuation, so a clean-up would)."""
    lines = []
    for i, path in enumerate(pictures(folder / "images", n, size=40)):
        Image.open(path).resize((40, 24)).save(path)
        first, second = texts(2 * n)[2 * i : 2 * i + 2]
        lines.append(json.dumps({"image": path.name, "captions": [first.upper() + "!", second + ", yes."]}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "captions.jsonl"


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_checkpoint_exports_as_it_is_with_a_k_means_codebook(tmp_path: Path, family: str) -> None:
    """`--config import`: no training step; the codebook is k-means of the model's embeddings of the
    user's captions (recorded so in the manifest); the bundle serves the checkpoint's own model with
    its own preprocessing (CLIP: centre crop, raw text; SigLIP: squash, texts padded to full length,
    its sentencepiece tokenizer) — the served vectors are transformers' reference model's."""
    ckpt = random_clip(tmp_path / family, family)
    captions = captioned(tmp_path / "data", 24)
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    sets = [f"model.init={ckpt}", f"data.jsonl={captions}", "model.codebook_size=16", "run.progress=false"]
    cmd = [sys.executable, "-m", "train", "--config", "import", "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(out / "best.pt", weights_only=True)
    fit = saved["codebook_fit"]
    assert saved["step"] == 0 and fit["images"] == 24 and fit["captions"] == 48 and fit["k"] == 16
    Exporter(ExportOptions(out / "best.pt", bundle, max_batch=8, int8=True), lambda _: None).run()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["codebook"]["init"] == "kmeans"
    assert manifest["image"]["crop"] == ("center" if family == "clip" else "none")
    assert manifest["text"]["clean"] is False
    assert manifest["text"]["pad_to_max_len"] is (family == "siglip")

    # the reference: transformers' model, its tokenizer on the raw text, the family's crop
    reference_class = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
    reference = reference_class.from_pretrained(ckpt)
    tokenizer = transformers.AutoTokenizer.from_pretrained(ckpt)
    caption = "The RED circle, on a blue square!"
    padding = "max_length" if family == "siglip" else "longest"
    tokens = tokenizer([caption], padding=padding, max_length=manifest["text"]["max_len"], truncation=True,
                       return_tensors="pt")  # fmt: skip
    picture = Image.open(tmp_path / "data" / "images" / "img0000.png").convert("RGB")  # 40 x 24
    square = picture.crop((8, 0, 32, 24)) if family == "clip" else picture
    pixels = torch.from_numpy(np.array(square.resize((32, 32), Image.Resampling.BICUBIC))).permute(2, 0, 1)
    mean, std = (torch.tensor(manifest["image"][k]).view(3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        want = reference.eval()(**tokens, pixel_values=((pixels.float() / 255 - mean) / std)[None])
    codebook = np.load(bundle / "codebook.npy")
    server = ServerProcess(bundle, "--max-wait-ms", "5", "--max-batch-size", "8")
    try:
        with server.client() as client:
            text = client.embed_texts([caption])[0]
            image = client.embed_images([(tmp_path / "data" / "images" / "img0000.png").read_bytes()])[0]
            codes = client.lookup(np.stack([text, image]), top_k=1)
    finally:
        assert server.stop() == 0
    assert np.abs(text - want.text_embeds[0].numpy()).max() <= 1e-4
    assert np.abs(image - want.image_embeds[0].numpy()).max() <= 1e-4
    assert [c[0][0] for c in codes] == list(np.argmax(np.stack([text, image]) @ codebook.T, axis=1))


def test_the_two_stage_clip_recipe_runs_and_hands_its_codebook_on(tmp_path: Path) -> None:
    """clip-locked (towers locked and cached, codebook from k-means) then clip-ft (`--init`; the
    top two blocks of each tower train, the codebook is stage 1's, not a second k-means)."""
    from train.config import load_train_config
    from train.loop import train

    ckpt = random_clip(tmp_path / "clip", layers=3)  # -3 (clip-ft) then locks one block of three
    captions = captioned(tmp_path / "data", 24)
    small_run = [f"model.init={ckpt}", f"data.jsonl={captions}", "data.held_out=", "data.val_split=train",
                 "data.workers=0", "model.codebook_size=8", "optim.batch_size=8", "optim.max_steps=2",
                 "optim.warmup_steps=1", "run.progress=false", f"lock.cache_dir={tmp_path}"]  # fmt: skip
    first, second = tmp_path / "locked", tmp_path / "ft"
    train(load_train_config("clip-locked", small_run), first)
    stage1 = torch.load(first / "best.pt", weights_only=True)
    assert stage1["codebook_fit"]["init"] == "kmeans"
    train(load_train_config("clip-ft", small_run), second, init=first / "best.pt")
    stage2 = torch.load(second / "best.pt", weights_only=True)
    assert stage2["codebook_fit"] == stage1["codebook_fit"]  # handed on, not refitted
    before, after = stage1["model"], stage2["model"]
    for tower in ("image_tower", "text_tower"):
        prefix = f"online.{tower}."
        locked = [n for n in before if n.startswith(prefix) and ("embeddings" in n or ".layers.0." in n)]
        top = [n for n in before if n.startswith(prefix + "encoder.layers.2.") and n.endswith("fc1.weight")]
        assert locked and all(torch.equal(before[n], after[n]) for n in locked)
        assert top and not any(torch.equal(before[n], after[n]) for n in top)
