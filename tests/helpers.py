"""Helpers several test modules share (a test module is not a library): a small training config,
what a run's metrics say, certificates for TLS tests, and a corpus of captions and pictures."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from train.config import TrainConfig, load_train_config
from train.data.shapes import COLOURS, KINDS, render, scene

SMALL = [
    "data.shapes_train_images=48",
    "data.shapes_val_images=16",
    "data.workers=0",
    "data.vocab_size=200",
    "model.image.width=32",
    "model.image.depth=1",
    "model.image.image_size=32",
    "model.text.width=32",
    "model.text.depth=1",
    "model.text.intermediate=64",
    "model.embed_dim=16",
    "model.codebook_size=8",
    "model.queue_size=32",
    "optim.batch_size=8",
    "optim.max_steps=6",
    "optim.warmup_steps=2",
    "run.log_every_steps=1",
    "run.eval_every_steps=3",
    "run.progress=false",
]


def small(*extra: str) -> TrainConfig:
    return load_train_config("tiny-shapes", [*SMALL, *extra])


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["type"] == "train"}


def issue(name: str, key: Any, issuer: Any | None, issuer_key: Any | None, ca: bool = False) -> Any:
    """A certificate for `name` signed by `issuer` (self-signed when None); "server" gets
    127.0.0.1 and localhost as its names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if not ca and name == "server":
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def write_pem(cert_path: Path, key_path: Path, cert: Any, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    key_path.write_bytes(key.private_bytes(pem, pkcs8, serialization.NoEncryption()))


def pictures(folder: Path, n: int, size: int = 48, first: int = 0) -> list[Path]:
    """`n` PNG files of rendered shapes, folder/img0000.png ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.png"
        Image.fromarray(np.asarray(render(scene(3, "cli", first + i), size), np.uint8)).save(p)
        paths.append(p)
    return paths


def texts(n: int) -> list[str]:
    colours = list(COLOURS)
    return [f"a {colours[i % len(colours)]} {KINDS[(i // 7) % len(KINDS)]} number {i}" for i in range(n)]


def corpus(folder: Path, n_texts: int, n_images: int) -> tuple[Path, list[str]]:
    """folder/items.jsonl: texts t0... then images i0... (32 px, under folder/img); and the texts."""
    captions = texts(n_texts)
    pictures(folder / "img", n_images, size=32)
    lines = [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(captions)]
    lines += [json.dumps({"id": f"i{i}", "image": f"img/img{i:04d}.png"}) for i in range(n_images)]
    jsonl = folder / "items.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl, captions


def clip_tokenizer(folder: Path) -> Path:
    """A small CLIP byte-level BPE (every byte, alone and word-final, a few merges), saved by
    transformers' CLIPTokenizer as the tokenizer.json a CLIP checkpoint ships."""
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "d o", "do g</w>", "c a", "ca t</w>", "o n</w>"]
    vocab_list = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab_list)}, merges=pairs)
    tok.save_pretrained(folder)
    return folder


def siglip_tokenizer(folder: Path) -> int:
    """A small sentencepiece unigram model trained on shapes captions, saved by transformers'
    SiglipTokenizer as a SigLIP checkpoint ships it (spiece.model, no tokenizer.json); its size."""
    import sentencepiece
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    lines = [*texts(200), "The dog on the cat!", "café naïve résumé über", "a DOG, a cat; 42 dogs"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=72, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    (folder / "spiece.model").write_bytes(model.getvalue())
    tok = transformers.SiglipTokenizer(vocab_file=str(folder / "spiece.model"))
    tok.save_pretrained(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)  # what a SigLIP checkpoint has: spiece.model only
    return len(tok)


def random_clip(folder: Path, family: str = "clip", image_size: int = 32, layers: int = 2) -> Path:
    """A Hugging Face CLIPModel (or SiglipModel) directory of random weights with the tokenizer of
    `clip_tokenizer` (or `siglip_tokenizer`): what `model.init` takes, small enough to train in
    seconds."""
    import torch
    import transformers

    if family == "siglip":
        vocab_size = siglip_tokenizer(folder)
    else:
        clip_tokenizer(folder)
        vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
        vocab_size = len(vocab)
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers}
    shape["num_attention_heads"] = 4
    text = {**shape, "vocab_size": vocab_size, "max_position_embeddings": 24}
    vision = {**shape, "image_size": image_size, "patch_size": 8}
    torch.manual_seed(0)
    if family == "clip":
        text |= {"eos_token_id": vocab["<|endoftext|>"], "bos_token_id": vocab["<|startoftext|>"],
                 "pad_token_id": vocab["<|endoftext|>"]}  # fmt: skip
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        transformers.CLIPModel(config).save_pretrained(folder)
    else:
        text |= {"projection_size": 32, "pad_token_id": 1}  # SiglipTokenizer pads with </s>
        transformers.SiglipModel(
            transformers.SiglipConfig(text_config=text, vision_config=vision)
        ).save_pretrained(folder)
    return folder
