"""Helpers several test modules share (a test module is not a library): a small training config,
what a run's metrics say, and certificates for TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

from train.config import TrainConfig, load_train_config

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
