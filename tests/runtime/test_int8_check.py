"""The serving machine proves its int8 graphs before serving them (runtime/selfcheck.py): a real
`python -m runtime serve --int8` checks each int8 graph on the bundle's reference inputs against
the stored fp32 embeddings, and refuses to start, or with `--int8=auto` serves fp32, where one
fails. A failing check is made by altering the stored reference (and re-signing the manifest, as a
bundle whose int8 graph really drifted on this CPU would look)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.cpu import cpu_isa
from runtime.engines import OnnxRuntimeEngine
from tests.bundles import rewritten
from tests.conftest import REPO_ROOT
from tests.runtime.conftest import Server
from tests.runtime.test_server import reference_text

TEXTS = ["a red circle above a blue square", "two green triangles"]


def drifted_text(arrays: dict[str, np.ndarray]) -> None:
    """Moves every stored fp32 text embedding ~27° away: cosine ~0.89 to what the graph computes."""
    emb = arrays["text.embedding"]  # (N, d)
    noise = np.random.default_rng(0).standard_normal(emb.shape).astype(np.float32)
    noise *= 0.5 * np.linalg.norm(emb, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    arrays["text.embedding"] = emb + noise


@pytest.fixture(scope="module")
def drifted(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rewritten(bundle, tmp_path_factory.mktemp("drifted") / "bundle", edit_reference=drifted_text)


def start(bundle: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), "--port", "0", *flags]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_int8_serves_after_its_check_and_info_reports_it(bundle: Path) -> None:
    s = Server(bundle, "--int8")
    try:
        with s.client() as client:
            info = client.info()
            assert info.cpu == str(cpu_isa())
            assert info.exported_on == str(cpu_isa())  # exported by this test session, on this machine
            for engine in info.engines:
                assert engine.precision == "int8" and engine.note == ""
                assert engine.check.passed and engine.check.precision == "int8"
                assert engine.check.threshold == pytest.approx(0.99)
                assert 0.99 <= engine.check.min_cosine <= 1.0 and engine.check.rows > 0
                assert engine.check.graph == engine.graph
            assert client.embed_texts(TEXTS).shape == (2, 16)
        metrics = s.metrics()
        for modality in ("image", "text"):
            assert (
                metrics[f'tessera_precision_check_min_cosine{{modality="{modality}",precision="int8"}}']
                >= 0.99
            )
            assert metrics[f'tessera_int8_fallback{{modality="{modality}"}}'] == 0
        assert any("text int8 graph text_encoder.int8.onnx: min cosine" in line for line in s.lines)
    finally:
        assert s.stop() == 0


def test_each_session_sets_what_its_graph_needs_to_compute_exactly(bundle: Path) -> None:
    """The int8 graphs record `session.x64quantprecision` (export/quantize.py); without it, an x86
    CPU without VNNI clips their products. A CPU whose int8 products are exact leaves it off: there
    it would only slow the graph. The fp32 graphs ask for nothing."""
    loaded = load_bundle(bundle)
    for key in ("image_int8", "text_int8"):
        assert loaded.manifest.graphs[key].session_config == {"session.x64quantprecision": "1"}
        options = OnnxRuntimeEngine(loaded, key, use_gpu=False, cpu_threads=1).session.get_session_options()
        if cpu_isa().vnni:
            with pytest.raises(RuntimeError, match="does not have configuration"):
                options.get_session_config_entry("session.x64quantprecision")
        else:
            assert options.get_session_config_entry("session.x64quantprecision") == "1"
    assert loaded.manifest.graphs["text"].session_config == {}


def test_a_failed_int8_check_refuses_the_start_in_one_line(drifted: Path) -> None:
    result = start(drifted, "--int8")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "serving after" not in result.stderr  # never SERVING
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: text int8 graph text_encoder.int8.onnx: min cosine 0.8")
    assert "to the bundle's fp32 reference < 0.99" in error and f"on this CPU ({cpu_isa()})" in error
    assert "--int8=auto" in error  # and what to do about it


def test_int8_auto_serves_fp32_where_the_check_fails_and_says_so(drifted: Path) -> None:
    s = Server(drifted, "--int8=auto")
    try:
        with s.client() as client:
            engines = {e.modality: e for e in client.info().engines}
            text, image = engines["text"], engines["image"]
            assert text.precision == "fp32" and text.graph == "text_encoder.onnx"
            assert not text.check.passed and text.check.min_cosine < 0.99
            assert text.note.startswith("int8 not served: text int8 graph")
            assert image.precision == "int8" and image.check.passed and image.note == ""
            want, _ = reference_text(drifted, TEXTS)  # the fp32 graph's vectors
            assert np.allclose(client.embed_texts(TEXTS), want, atol=1e-5)
        metrics = s.metrics()
        assert metrics['tessera_int8_fallback{modality="text"}'] == 1
        assert metrics['tessera_int8_fallback{modality="image"}'] == 0
        assert metrics['tessera_precision_check_min_cosine{modality="text",precision="int8"}'] < 0.99
        assert any("WARNING" in line and "serving the text encoder in fp32" in line for line in s.lines)
    finally:
        assert s.stop() == 0


def test_a_bundle_that_cannot_prove_its_int8_is_refused_or_served_fp32(bundle: Path, tmp_path: Path) -> None:
    def drop_reference(manifest: dict[str, Any]) -> None:  # as bundles exported before the reference existed
        manifest["reference"] = None

    def drop_int8(manifest: dict[str, Any]) -> None:
        del manifest["graphs"]["image_int8"], manifest["graphs"]["text_int8"]

    unproven = rewritten(bundle, tmp_path / "unproven", edit_manifest=drop_reference)
    refused = start(unproven, "--int8")
    assert refused.returncode == 1
    assert "has no reference outputs to check int8 against" in refused.stderr.strip().splitlines()[-1]
    fp32_only = rewritten(bundle, tmp_path / "fp32-only", edit_manifest=drop_int8)
    refused = start(fp32_only, "--int8")
    assert refused.returncode == 1
    assert "has no image_int8, text_int8 graph" in refused.stderr.strip().splitlines()[-1]
    s = Server(fp32_only, "--int8=auto")
    try:
        with s.client() as client:
            assert {(e.precision, e.check.rows) for e in client.info().engines} == {("fp32", 0)}
    finally:
        assert s.stop() == 0


def test_runtime_check_runs_the_start_check_without_serving(bundle: Path, drifted: Path) -> None:
    def check(b: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "runtime", "check", "--bundle", str(b)]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    good = check(bundle)
    assert good.returncode == 0, good.stderr
    lines = good.stdout.strip().splitlines()
    assert [line.split(" graph ")[0] for line in lines] == ["image int8", "text int8"]
    assert all(">= 0.99 on this CPU" in line for line in lines)
    bad = check(drifted)
    assert bad.returncode == 1
    assert "text int8 graph text_encoder.int8.onnx: min cosine 0.8" in bad.stdout and "< 0.99" in bad.stdout
