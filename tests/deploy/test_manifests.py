"""deploy/: what can be checked without Docker, Helm or a cluster (none is here). The Kubernetes
manifests validate against the Kubernetes API schemas (kubernetes-validate, strict: no unknown
field); what they name exists in the runtime — every TESSERA_* variable is a serve flag, the probe
paths are the HTTP API's open health checks, the autoscaled metric is one the runtime exports,
the ports are the ones the images set; the images install extras pyproject.toml defines and run
`runtime serve`."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import tomllib

from runtime.config import ServeConfig
from runtime.http_api import OPEN
from runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = "1.31.0"
yaml = pytest.importorskip("yaml", reason="pyyaml (with kubernetes-validate, the dev extra) is not installed")


def documents() -> list[dict]:
    return [d for path in sorted((DEPLOY / "chart" / "templates").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]  # fmt: skip


def test_the_manifests_are_valid_kubernetes_objects() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the dev extra) is not installed"
    )
    kinds = []
    for doc in documents():
        kv.validate(doc, KUBERNETES, strict=True)  # raises on a wrong or unknown field
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service", "Service"]


def test_what_the_manifests_name_exists_in_the_runtime() -> None:
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents()}
    pod = by_kind[("Deployment", "tessera")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flags = {"TESSERA_" + f.name.upper() for f in fields(ServeConfig)}
    env = {e["name"] for e in container["env"]}
    assert env <= flags, f"not serve flags: {env - flags}"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in OPEN  # answered without an API key
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    image_env = dict(re.findall(r"(TESSERA_\w+)=(\S+)", (DEPLOY / "Dockerfile.cpu").read_text()))
    assert ports == {"grpc": int(image_env["TESSERA_PORT"]), "http": int(image_env["TESSERA_HTTP_PORT"]),
                     "metrics": int(image_env["TESSERA_METRICS_PORT"])}  # fmt: skip
    assert set(image_env) <= flags
    hpa = by_kind[("HorizontalPodAutoscaler", "tessera")]["spec"]
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    assert metric in {m.name for m in Metrics().registry.collect()}
    assert metric in (DEPLOY / "prometheus-adapter-values.yaml").read_text()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["bundle"] == image_env["TESSERA_BUNDLE"] and mounts["data"] == image_env["TESSERA_DATA_DIR"]


def test_the_images_install_defined_extras_and_serve() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for name in ("Dockerfile.cpu", "Dockerfile.jetson"):
        text = (DEPLOY / name).read_text()
        for group in re.findall(r'pip install "?\.\[([\w,]+)\]', text):
            assert set(group.split(",")) <= extras, (name, group)
        assert re.search(r'ENTRYPOINT \["python3?", "-m", "runtime", "serve"\]', text), name
        assert set(re.findall(r"(TESSERA_\w+)=", text)) <= {
            "TESSERA_" + f.name.upper() for f in fields(ServeConfig)
        }
