"""Independent float64 loop implementations of docs/architecture.md §2, written from the formulas only.

Plain Python over lists of floats (math.fsum): no torch, no vectorisation, nothing shared with
`train/objectives`. Inputs are nested lists; outputs are floats.
"""

from __future__ import annotations

import math

Vec = list[float]


def dot(a: Vec, b: Vec) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = math.fsum(e)
    return [v / z for v in e]


def log_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    lse = m + math.log(math.fsum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def positives(row_id: int, col_ids: list[int]) -> list[float]:
    n = sum(1 for c in col_ids if c == row_id)
    return [(1.0 / n if c == row_id else 0.0) for c in col_ids]


def contrastive_direction(
    rows: list[Vec],
    teacher_rows: list[Vec] | None,
    cols: list[Vec],
    row_ids: list[int],
    col_ids: list[int],
    tau: float,
    alpha: float,
    teacher_cols: list[Vec] | None = None,
) -> float:
    """mean_i CE(rows_i·cols/τ, α·softmax(teacher_i·teacher_cols/τ) + (1−α)·y_i); teacher_cols: cols."""
    total = []
    for i, row in enumerate(rows):
        logits = [dot(row, c) / tau for c in cols]
        y = positives(row_ids[i], col_ids)
        if teacher_rows is not None and alpha > 0:
            soft = softmax([dot(teacher_rows[i], c) / tau for c in (teacher_cols or cols)])
            target = [alpha * s + (1 - alpha) * p for s, p in zip(soft, y, strict=True)]
        else:
            target = y
        logp = log_softmax(logits)
        total.append(-math.fsum(t * lp for t, lp in zip(target, logp, strict=True)))
    return math.fsum(total) / len(total)


def cma(zv, zt, zvm, ztm, qv, qt, ids, qids, tau, alpha) -> float:
    cols_t, cols_v, col_ids = ztm + qt, zvm + qv, ids + qids
    i2t = contrastive_direction(zv, zvm, cols_t, ids, col_ids, tau, alpha)
    t2i = contrastive_direction(zt, ztm, cols_v, ids, col_ids, tau, alpha)
    return 0.5 * (i2t + t2i)


def cma_online(zv, zt, zvm, ztm, qv, qt, ids, qids, tau, alpha) -> float:
    """CMA whose in-batch columns are the online features (CLIP); the teacher keeps the momentum ones."""
    col_ids = ids + qids
    i2t = contrastive_direction(zv, zvm, zt + qt, ids, col_ids, tau, alpha, teacher_cols=ztm + qt)
    t2i = contrastive_direction(zt, ztm, zv + qv, ids, col_ids, tau, alpha, teacher_cols=zvm + qv)
    return 0.5 * (i2t + t2i)


def imc(zv, zt, zvm, ztm, qv, qt, ids, qids, tau) -> float:
    col_ids = ids + qids
    i2i = contrastive_direction(zv, None, zvm + qv, ids, col_ids, tau, 0.0)
    t2t = contrastive_direction(zt, None, ztm + qt, ids, col_ids, tau, 0.0)
    return 0.5 * (i2i + t2t)


def local_infonce(glob: list[Vec], locals_: list[list[Vec]], mask: list[list[bool]], tau: float) -> float:
    per_sample = []
    for i, g in enumerate(glob):
        negatives = [
            dot(g, locals_[k][m]) / tau
            for k in range(len(locals_))
            if k != i
            for m in range(len(locals_[k]))
            if mask[k][m]
        ]
        losses = []
        for j, l in enumerate(locals_[i]):
            if not mask[i][j]:
                continue
            pos = dot(g, l) / tau
            logp = log_softmax([pos, *negatives])[0]
            losses.append(-logp)
        per_sample.append(math.fsum(losses) / len(losses))
    return math.fsum(per_sample) / len(per_sample)


def lmi(zv, zt, lv, lv_mask, lt, lt_mask, tau) -> float:
    return 0.5 * (local_infonce(zv, lv, lv_mask, tau) + local_infonce(zt, lt, lt_mask, tau))


def sinkhorn(scores: list[Vec], eps: float, n_iters: int) -> list[Vec]:
    """SwAV's Sinkhorn-Knopp, loop form: Q (K x B) from exp(scores/ε), alternating code and sample
    normalisations; returns B rows of K assignment probabilities."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[s][c] / eps) for s in range(b)] for c in range(k)]
    total = math.fsum(v for row in q for v in row)
    q = [[v / total for v in row] for row in q]
    for _ in range(n_iters):
        for c in range(k):
            r = math.fsum(q[c])
            q[c] = [v / r / k for v in q[c]]
        for s in range(b):
            col = math.fsum(q[c][s] for c in range(k))
            for c in range(k):
                q[c][s] = q[c][s] / col / b
    return [[q[c][s] * b for c in range(k)] for s in range(b)]


def code(zv, zt, zvm, ztm, codebook, tau_c, eps, n_iters) -> float:
    def h(q_rows: list[Vec], student: list[Vec]) -> float:
        vals = []
        for q, z in zip(q_rows, student, strict=True):
            logp = log_softmax([dot(z, c) / tau_c for c in codebook])
            vals.append(-math.fsum(a * b for a, b in zip(q, logp, strict=True)))
        return math.fsum(vals) / len(vals)

    qv = sinkhorn([[dot(z, c) for c in codebook] for z in zvm], eps, n_iters)
    qt = sinkhorn([[dot(z, c) for c in codebook] for z in ztm], eps, n_iters)
    return 0.25 * (h(qv, zt) + h(qt, zv) + h(qv, zv) + h(qt, zt))


def sigmoid_pairs(zt: list[Vec], zv: list[Vec], ids: list[int], tau: float, bias: float) -> float:
    """SigLIP: every (text, image) pair a binary decision, summed, over the number of texts."""
    total = 0.0
    for t, tid in zip(zt, ids, strict=True):
        for v, vid in zip(zv, ids, strict=True):
            z = 1.0 if tid == vid else -1.0
            x = z * (dot(t, v) / tau + bias)
            total += math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))  # -log σ(x)
    return total / len(zt)
