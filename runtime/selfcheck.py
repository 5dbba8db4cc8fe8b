"""The serving machine proves a lower-precision graph before it serves it.

The export checks its int8 graphs against the fp32 ones on the machine that exports, but integer
arithmetic can depend on the CPU that runs it (runtime/cpu.py). So at start, before health says
SERVING, each int8 engine embeds the bundle's reference inputs (BUNDLE/reference.npz, written by
the export) and every row is compared with the fp32 graph's embedding stored beside it:

    reference = load_reference(bundle)                          # None: the bundle has none
    check = check_engine(engine, reference, "text", "int8")     # -> PrecisionCheck
    check.passed, check.min_cosine, check.describe()

The rows run the ways the server runs them: together, in calls of at most the engine's items per
call (runtime/footprint.py), and the first few one at a time (a batch of one takes other kernel
paths); a text row alone is cut to its own length, as the server's length split would send it
(unless the bundle pads every text to its full length: `TextSpec.pad_to_max_len`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.bundle import Bundle, ReferenceSpec
from runtime.cpu import cpu_isa
from runtime.errors import BundleError

SINGLE_ROWS = 5  # reference rows also run alone (the export's sentences are five)


class Runs(Protocol):
    graph: str

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Reference:
    spec: ReferenceSpec
    inputs: dict[str, dict[str, np.ndarray]]  # graph key -> {input name: (N, ...)}
    embeddings: dict[str, np.ndarray]  # graph key -> (N, d) float32, from the fp32 graph
    full_length_text: bool = False  # texts are served padded to max_len, so never cut (SigLIP)


@dataclass(frozen=True)
class PrecisionCheck:
    modality: str  # "image" | "text"
    graph: str  # the bundle file checked
    precision: str  # "int8"
    min_cosine: float  # least cosine of any row to its fp32 reference embedding, on this machine
    max_abs_diff: float  # largest |Δ| of any embedding value
    threshold: float  # what the bundle asks of this precision
    rows: int  # rows compared, over every call
    isa: str  # this machine's CPU (runtime/cpu.py)

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def describe(self) -> str:
        verdict = ">=" if self.passed else "<"
        return (
            f"{self.modality} {self.precision} graph {self.graph}: min cosine {self.min_cosine:.4f} to the "
            f"bundle's fp32 reference {verdict} {self.threshold} on this CPU ({self.isa})"
        )


def load_reference(bundle: Bundle) -> Reference | None:
    """The bundle's reference inputs and fp32 embeddings (checksummed with the rest of the bundle)."""
    spec = bundle.manifest.reference
    if spec is None:
        return None
    path = bundle.path(spec.file)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable reference arrays: {e}") from e
    inputs: dict[str, dict[str, np.ndarray]] = {}
    embeddings: dict[str, np.ndarray] = {}
    for key in spec.inputs:
        graph = bundle.manifest.graphs[key]
        try:
            inputs[key] = {t.name: data[f"{key}.{t.name}"] for t in graph.inputs}
            embeddings[key] = data[f"{key}.embedding"]
        except KeyError as e:
            raise BundleError(f"{path}: no array {e} for the {key} graph") from e
    return Reference(spec, inputs, embeddings, bundle.manifest.text.pad_to_max_len)


def check_engine(
    engine: Runs, reference: Reference, key: str, precision: str, rows_per_call: int | None = None
) -> PrecisionCheck:
    """Runs `engine` (the `precision` twin of graph `key`) on the reference rows; see the module doc."""
    feeds, want = reference.inputs[key], reference.embeddings[key]  # {name: (N, ...)}, (N, d)
    step = rows_per_call or len(want)
    got = [  # every row, in calls of at most `step` rows: (n, d) each
        (engine.run({name: x[i : i + step] for name, x in feeds.items()})[0], want[i : i + step])
        for i in range(0, len(want), step)
    ]
    for row in range(min(SINGLE_ROWS, len(want))):
        single = {name: x[row : row + 1] for name, x in feeds.items()}
        if "attention_mask" in single and not reference.full_length_text:  # as the length split serves it
            length = int(single["attention_mask"].sum())
            single = {name: x[:, :length] for name, x in single.items()}
        got.append((engine.run(single)[0], want[row : row + 1]))
    cosines = np.concatenate([_row_cosines(g, w) for g, w in got])
    diff = max(float(np.abs(g.astype(np.float64) - w).max()) for g, w in got)
    return PrecisionCheck(
        modality=key,
        graph=engine.graph,
        precision=precision,
        min_cosine=float(cosines.min()),
        max_abs_diff=diff if np.isfinite(diff) else float("inf"),
        threshold=reference.spec.min_cosine[precision],
        rows=len(cosines),
        isa=str(cpu_isa()),
    )


def _row_cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """(N, d), (N, d) -> (N,) cosines in float64; a non-finite row scores -inf."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    norms = np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1), 1e-30)
    cosines = (g * w).sum(axis=1) / norms
    return np.where(np.isfinite(cosines), cosines, -np.inf)
