"""The combined alignment objective and its presets (docs/architecture.md §2).

    itc     = CMA with α = 0                  (CLIP/ALBEF baseline)
    tcl     = CMA + IMC + LMI                 (TCL: its six terms, each pair halved, equal weights)
    codis   = CMA + CODE                      (CODIS without its fusion-encoder terms)
    tessera = CMA + IMC + LMI + CODE
    sigmoid = SIGMOID                         (SigLIP's pairwise loss; `cross_modal = "sigmoid"` puts
                                               it in place of CMA in any other preset)

Rows are this rank's samples; columns are the gathered momentum batch followed by the queue (for
CMA with `online_columns`, the gathered online batch with gradient, then the queue). The returned
loss is the mean over this rank's rows: DDP's gradient averaging makes the step equal to a single
process on the concatenated batch (tests/train/test_distributed.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.config import ObjectiveConfig, Preset
from train.distributed import all_gather_with_grad
from train.objectives.cma import cma_loss
from train.objectives.codebook import code_loss
from train.objectives.common import as_float
from train.objectives.features import GatheredTargets, StepFeatures
from train.objectives.imc import imc_loss
from train.objectives.lmi import lmi_loss
from train.objectives.sigmoid import sigmoid_loss

PRESET_TERMS: dict[Preset, tuple[str, ...]] = {
    "itc": ("cma",),
    "tcl": ("cma", "imc", "lmi"),
    "codis": ("cma", "code"),
    "tessera": ("cma", "imc", "lmi", "code"),
    "sigmoid": ("sigmoid",),
}


def uses_sigmoid(cfg: ObjectiveConfig) -> bool:
    return cfg.preset == "sigmoid" or cfg.cross_modal == "sigmoid"


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # weighted sum, scalar
    terms: dict[str, torch.Tensor]  # unweighted, detached, by term name


class AlignmentObjective:
    """Callable objective for one preset; stateless (queues and τ live in the model)."""

    def __init__(self, cfg: ObjectiveConfig, codebook_temp: float) -> None:
        self.cfg = cfg
        self.codebook_temp = codebook_temp
        terms = PRESET_TERMS[cfg.preset]
        if cfg.cross_modal == "sigmoid":
            terms = tuple("sigmoid" if t == "cma" else t for t in terms)
        self.weights = {
            "cma": cfg.weight_cma,
            "sigmoid": cfg.weight_cma,  # the cross-modal term's weight, whichever form it takes
            "imc": cfg.weight_imc,
            "lmi": cfg.weight_lmi,
            "code": cfg.weight_code,
        }
        # A term weighted 0 is not computed: it adds no gradient, and LMI's local features are the
        # dearest thing a step makes (an ablation that turns LMI off should not pay for them).
        self.terms = tuple(t for t in terms if self.weights[t] != 0)
        if not self.terms:
            raise ValueError(f"objective: every term of preset {cfg.preset!r} is weighted 0 ({terms})")

    @property
    def needs_locals(self) -> bool:
        """Whether a term reads the momentum local features (only LMI does)."""
        return "lmi" in self.terms

    def alpha(self, alpha: float) -> float:
        """The α actually used: `itc` never distils."""
        return 0.0 if self.cfg.preset == "itc" else alpha

    def __call__(
        self,
        features: StepFeatures,
        targets: GatheredTargets,
        queue: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # Q_v (M, d), Q_t (M, d), ids (M,)
        tau: torch.Tensor,
        codebook: torch.Tensor,  # (K, d), normalised
        alpha: float,
        logit_bias: torch.Tensor | None = None,  # the sigmoid term's b
    ) -> ObjectiveOutput:
        q_image, q_text, q_ids = queue
        image, text = as_float(features.image), as_float(features.text)
        image_m, text_m = as_float(features.image_m), as_float(features.text_m)
        q_image, q_text = q_image.to(image.dtype), q_text.to(image.dtype)
        cols_image = torch.cat([as_float(targets.image_m), q_image])  # (G+M, d)
        cols_text = torch.cat([as_float(targets.text_m), q_text])  # (G+M, d)
        col_ids = torch.cat([targets.ids, q_ids])  # (G+M,)
        rows = targets.row_offset + torch.arange(image.shape[0], device=image.device)  # (B,)
        terms: dict[str, torch.Tensor] = {}
        if "cma" in self.terms:
            student_image, student_text = cols_image, cols_text  # ALBEF: the teacher's columns
            if self.cfg.online_columns:  # CLIP: the online batch, with gradient, then the queue
                student_image = torch.cat([all_gather_with_grad(image), q_image])  # (G+M, d)
                student_text = torch.cat([all_gather_with_grad(text), q_text])  # (G+M, d)
            terms["cma"] = cma_loss(
                image=image, text=text, image_m=image_m, text_m=text_m,
                cols_image=student_image, cols_text=student_text, row_ids=features.ids, col_ids=col_ids,
                tau=tau, alpha=self.alpha(alpha), teacher_cols_image=cols_image, teacher_cols_text=cols_text,
            )  # fmt: skip
        if "sigmoid" in self.terms:
            assert logit_bias is not None, "the sigmoid objective needs model.logit_bias"
            columns = all_gather_with_grad(image)  # (G, d)
            terms["sigmoid"] = sigmoid_loss(text, columns, features.ids, targets.ids, tau, logit_bias)
        if "imc" in self.terms:
            terms["imc"] = imc_loss(image, text, cols_image, cols_text, features.ids, col_ids, tau)
        if "lmi" in self.terms:
            if targets.image_locals_m is None or targets.text_locals_m is None:
                raise ValueError(
                    "the lmi term needs the momentum local features (step_features(locals_m=True))"
                )
            terms["lmi"] = lmi_loss(
                image,
                text,
                as_float(targets.image_locals_m),
                targets.image_locals_mask,
                as_float(targets.text_locals_m),
                targets.text_locals_mask,
                rows,
                tau,
            )
        if "code" in self.terms:
            terms["code"] = code_loss(
                image,
                text,
                image_m,
                text_m,
                as_float(codebook),
                self.codebook_temp,
                self.cfg.sinkhorn_eps,
                self.cfg.sinkhorn_iters,
            )
        loss = sum(self.weights[name] * value for name, value in terms.items())
        assert isinstance(loss, torch.Tensor)
        return ObjectiveOutput(loss=loss, terms={k: v.detach() for k, v in terms.items()})
