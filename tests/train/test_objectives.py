"""Each loss equals the independent float64 loop implementation in tests/train/reference.py."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.train import reference as ref
from train.config import ObjectiveConfig
from train.objectives import (
    AlignmentObjective,
    StepFeatures,
    cma_loss,
    code_loss,
    gather_targets,
    imc_loss,
    lmi_loss,
    sinkhorn,
)
from train.objectives.sigmoid import sigmoid_loss

TOL = 1e-6
B, M, D, K, NV, NT = 5, 6, 8, 7, 4, 6


def unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)


@pytest.fixture
def batch() -> dict:
    gen = torch.Generator().manual_seed(1234)
    text_mask = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
        dtype=torch.bool,
    )
    image_mask = torch.ones(B, NV, dtype=torch.bool)
    return {
        "zv": unit(B, D, gen=gen),
        "zt": unit(B, D, gen=gen),
        "zvm": unit(B, D, gen=gen),
        "ztm": unit(B, D, gen=gen),
        "qv": unit(M, D, gen=gen),
        "qt": unit(M, D, gen=gen),
        # two captions of image 0 in the batch, and images 0 and 1 again in the queue
        "ids": torch.tensor([0, 0, 1, 2, 3]),
        "qids": torch.tensor([0, 1, 1, 4, 5, 6]),
        "lv": unit(B, NV, D, gen=gen),
        "lv_mask": image_mask,
        "lt": unit(B, NT, D, gen=gen),
        "lt_mask": text_mask,
        "codebook": unit(K, D, gen=gen),
        "tau": torch.tensor(0.07, dtype=torch.float64),
    }


def step_features(b: dict, **replaced: torch.Tensor) -> StepFeatures:
    """The fixture batch as one step's features; `replaced` swaps some of them."""
    fields = dict(
        image=b["zv"], text=b["zt"], image_m=b["zvm"], text_m=b["ztm"],
        image_locals_m=b["lv"], image_locals_mask=b["lv_mask"],
        text_locals_m=b["lt"], text_locals_mask=b["lt_mask"], ids=b["ids"],
    )  # fmt: skip
    return StepFeatures(**{**fields, **replaced})


def L(x: torch.Tensor) -> list:
    return x.tolist()


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_cma_matches_loops(batch: dict, alpha: float) -> None:
    b = batch
    got = cma_loss(
        image=b["zv"], text=b["zt"], image_m=b["zvm"], text_m=b["ztm"],
        cols_image=torch.cat([b["zvm"], b["qv"]]), cols_text=torch.cat([b["ztm"], b["qt"]]),
        row_ids=b["ids"], col_ids=torch.cat([b["ids"], b["qids"]]), tau=b["tau"], alpha=alpha,
    )  # fmt: skip
    want = ref.cma(
        L(b["zv"]), L(b["zt"]), L(b["zvm"]), L(b["ztm"]), L(b["qv"]), L(b["qt"]),
        L(b["ids"]), L(b["qids"]), 0.07, alpha,
    )  # fmt: skip
    assert abs(got.item() - want) < TOL


def test_cma_targets_spread_over_every_caption_of_the_image(batch: dict) -> None:
    """With α = 0 and perfect alignment, the loss is the entropy of y: log(#positives) per row."""
    b = batch
    z = b["zv"]
    tiny = torch.tensor(1e-4, dtype=torch.float64)  # very sharp: only exact matches count
    ids = torch.tensor([0, 1, 2, 3, 4])
    cols = torch.cat([z, z[:2]])  # queue repeats samples 0 and 1
    col_ids = torch.cat([ids, ids[:2]])
    loss = cma_loss(image=z, text=z, image_m=z, text_m=z, cols_image=cols, cols_text=cols, row_ids=ids,
                    col_ids=col_ids, tau=tiny, alpha=0.0)  # fmt: skip
    want = (2 * torch.log(torch.tensor(2.0))) / 5  # rows 0 and 1 have two equal positives
    assert abs(loss.item() - want.item()) < 1e-6


def test_imc_matches_loops(batch: dict) -> None:
    b = batch
    got = imc_loss(
        b["zv"], b["zt"], torch.cat([b["zvm"], b["qv"]]), torch.cat([b["ztm"], b["qt"]]),
        b["ids"], torch.cat([b["ids"], b["qids"]]), b["tau"],
    )  # fmt: skip
    want = ref.imc(
        L(b["zv"]), L(b["zt"]), L(b["zvm"]), L(b["ztm"]), L(b["qv"]), L(b["qt"]),
        L(b["ids"]), L(b["qids"]), 0.07,
    )  # fmt: skip
    assert abs(got.item() - want) < TOL


def test_lmi_matches_loops_with_masked_text_locals(batch: dict) -> None:
    b = batch
    rows = torch.arange(B)
    got = lmi_loss(b["zv"], b["zt"], b["lv"], b["lv_mask"], b["lt"], b["lt_mask"], rows, b["tau"])
    want = ref.lmi(L(b["zv"]), L(b["zt"]), L(b["lv"]), L(b["lv_mask"]), L(b["lt"]), L(b["lt_mask"]), 0.07)
    assert abs(got.item() - want) < TOL
    # Padding is invisible: anything written into masked text locals changes nothing.
    garbage = torch.where(b["lt_mask"][..., None], b["lt"], torch.full_like(b["lt"], 7.0))
    again = lmi_loss(b["zv"], b["zt"], b["lv"], b["lv_mask"], garbage, b["lt_mask"], rows, b["tau"])
    assert abs(again.item() - got.item()) < 1e-12


def test_code_matches_loops(batch: dict) -> None:
    b = batch
    got = code_loss(b["zv"], b["zt"], b["zvm"], b["ztm"], b["codebook"], 0.1, 0.05, 3)
    want = ref.code(L(b["zv"]), L(b["zt"]), L(b["zvm"]), L(b["ztm"]), L(b["codebook"]), 0.1, 0.05, 3)
    assert abs(got.item() - want) < TOL


def test_sinkhorn_matches_loops(batch: dict) -> None:
    scores = batch["zvm"] @ batch["codebook"].T
    got = sinkhorn(scores, 0.05, 3)
    want = torch.tensor(ref.sinkhorn(L(scores), 0.05, 3), dtype=torch.float64)
    assert (got - want).abs().max().item() < 1e-9


def test_sinkhorn_marginals() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = unit(64, D, gen=gen) @ unit(16, D, gen=gen).T  # (B, K)
    errors = []
    for iters in (1, 3, 10, 50):
        q = sinkhorn(scores, 0.05, iters)
        # The last normalisation is over samples: each row is a distribution, exactly.
        assert torch.allclose(q.sum(1), torch.ones(64, dtype=torch.float64), atol=1e-12)
        assert (q >= 0).all()
        # Codes approach equal mass B/K as the iterations converge.
        errors.append((q.sum(0) - 64 / 16).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 < errors[0]


def test_sinkhorn_sharpens_as_epsilon_falls() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = unit(32, D, gen=gen) @ unit(8, D, gen=gen).T

    def mean_entropy(eps: float) -> float:
        q = sinkhorn(scores, eps, 3)
        return -(q * q.clamp_min(1e-300).log()).sum(1).mean().item()

    entropies = [mean_entropy(eps) for eps in (1.0, 0.3, 0.1, 0.05, 0.02, 0.005)]
    assert all(a > b for a, b in itertools.pairwise(entropies)), entropies
    assert entropies[0] > 0.9 * torch.log(torch.tensor(8.0)).item()  # near uniform
    assert entropies[-1] < 0.1  # near one-hot


@pytest.mark.parametrize("preset", ["itc", "tcl", "codis", "tessera"])
def test_presets_sum_their_terms(batch: dict, preset: str) -> None:
    b = batch
    f = step_features(b)
    objective = AlignmentObjective(ObjectiveConfig(preset=preset, weight_lmi=0.5), codebook_temp=0.1)
    out = objective(f, gather_targets(f), (b["qv"], b["qt"], b["qids"]), b["tau"], b["codebook"], alpha=0.4)
    args = (
        L(b["zv"]),
        L(b["zt"]),
        L(b["zvm"]),
        L(b["ztm"]),
        L(b["qv"]),
        L(b["qt"]),
        L(b["ids"]),
        L(b["qids"]),
    )
    want = {
        "cma": ref.cma(*args, 0.07, 0.0 if preset == "itc" else 0.4),
        "imc": ref.imc(*args, 0.07),
        "lmi": ref.lmi(
            L(b["zv"]), L(b["zt"]), L(b["lv"]), L(b["lv_mask"]), L(b["lt"]), L(b["lt_mask"]), 0.07
        ),
        "code": ref.code(L(b["zv"]), L(b["zt"]), L(b["zvm"]), L(b["ztm"]), L(b["codebook"]), 0.1, 0.05, 3),
    }
    expected_terms = {"itc": {"cma"}, "tcl": {"cma", "imc", "lmi"}, "codis": {"cma", "code"}}.get(
        preset, {"cma", "imc", "lmi", "code"}
    )
    assert set(out.terms) == expected_terms
    for name in expected_terms:
        assert abs(out.terms[name].item() - want[name]) < TOL, name
    total = sum((0.5 if n == "lmi" else 1.0) * want[n] for n in expected_terms)
    assert abs(out.loss.item() - total) < TOL


def test_a_term_weighted_zero_is_not_computed(batch: dict) -> None:
    """An ablation's zeroed term costs nothing: without LMI no step makes the local features."""
    b = batch
    f = step_features(b)
    full = AlignmentObjective(ObjectiveConfig(preset="tcl"), codebook_temp=0.1)
    no_lmi = AlignmentObjective(ObjectiveConfig(preset="tcl", weight_lmi=0.0), codebook_temp=0.1)
    assert full.needs_locals and not no_lmi.needs_locals
    queue = (b["qv"], b["qt"], b["qids"])
    got = no_lmi(f, gather_targets(f), queue, b["tau"], b["codebook"], alpha=0.4)
    want = full(f, gather_targets(f), queue, b["tau"], b["codebook"], alpha=0.4)
    assert set(got.terms) == {"cma", "imc"}
    assert abs(got.loss.item() - (want.loss - want.terms["lmi"]).item()) < TOL
    with pytest.raises(ValueError, match="every term of preset 'itc' is weighted 0"):
        AlignmentObjective(ObjectiveConfig(preset="itc", weight_cma=0.0), codebook_temp=0.1)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_online_columns_match_loops(batch: dict, alpha: float) -> None:
    b = batch
    f = step_features(b)
    objective = AlignmentObjective(ObjectiveConfig(preset="codis", online_columns=True), codebook_temp=0.1)
    out = objective(f, gather_targets(f), (b["qv"], b["qt"], b["qids"]), b["tau"], b["codebook"], alpha)
    args = [L(b[k]) for k in ("zv", "zt", "zvm", "ztm", "qv", "qt", "ids", "qids")]
    assert abs(out.terms["cma"].item() - ref.cma_online(*args, 0.07, alpha)) < TOL
    assert abs(out.terms["cma"].item() - ref.cma(*args, 0.07, alpha)) > 1e-3  # not the ALBEF form


def test_online_columns_without_queue_are_clips_symmetric_infonce(batch: dict) -> None:
    """Loss and gradients equal CLIP's two cross-entropies over the batch's similarity matrix: each
    feature is trained through its row and its column (with momentum columns only through its row)."""
    b = batch
    ids = torch.arange(B)  # one caption per image: the diagonal is the target
    zv, zt = b["zv"].clone().requires_grad_(True), b["zt"].clone().requires_grad_(True)
    f = step_features(b, image=zv, text=zt, image_m=zv.detach(), text_m=zt.detach(), ids=ids)
    empty = (b["qv"][:0], b["qt"][:0], ids[:0])

    def grads(online: bool) -> tuple[torch.Tensor, ...]:
        objective = AlignmentObjective(ObjectiveConfig(preset="itc", online_columns=online), 0.1)
        loss = objective(f, gather_targets(f), empty, b["tau"], b["codebook"], 0.0).loss
        return (loss, *torch.autograd.grad(loss, (zv, zt)))

    logits = zv @ zt.T / b["tau"]  # (B, B)
    clip = 0.5 * (F.cross_entropy(logits, ids) + F.cross_entropy(logits.T, ids))
    want = (clip, *torch.autograd.grad(clip, (zv, zt)))
    got = grads(online=True)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-9)
    albef = grads(online=False)  # same loss value, half the gradient paths
    assert torch.allclose(albef[0], want[0], atol=1e-9)
    assert (albef[2] - want[2]).abs().max() > 1e-3


def test_sigmoid_matches_loops_and_takes_the_place_of_cma(batch: dict) -> None:
    b = batch
    bias = torch.tensor(-3.0, dtype=torch.float64)
    got = sigmoid_loss(b["zt"], b["zv"], b["ids"], b["ids"], b["tau"], bias)
    want = ref.sigmoid_pairs(L(b["zt"]), L(b["zv"]), L(b["ids"]), 0.07, -3.0)
    assert abs(got.item() - want) < TOL
    cfg = ObjectiveConfig(preset="codis", cross_modal="sigmoid")
    assert AlignmentObjective(cfg, 0.1).terms == ("sigmoid", "code")
    assert AlignmentObjective(ObjectiveConfig(preset="sigmoid"), 0.1).terms == ("sigmoid",)
