"""Independent float64 reference for the MFT loss, written from docs/method.md, sections 1-2.

Nothing here is shared with ``nemo_mft.loss`` (or ModelOpt): it is a dense, row-by-row transcription of
the formulas, meant to be obviously right rather than fast.

Per token (valid rows only), with teacher logits z, student logits s, label y, temperature T, margin tau:

    p = softmax(z / T),  a = argmax p (first index on ties)
    teacher wrong (a != y):            m = (p_a - p_y + tau) / (1 + p_a - p_y)
    teacher right, correct_all:        c = 1 if p_y > 1 - tau else p_y + tau
                                       m = (c - p_y) / (1 - p_y)          (q = e_y when c == 1)
    teacher right, not correct_all:    m = 0
    q = (1 - m) p + m e_y
    l = T^2 * KL(q || softmax(s / T))
    dl/ds = T * (softmax(s / T) - q)

Token weight w = loss_mask (1 if None), 0 where label == ignore_index. Columns >= vocab_size do not
exist for the math (they get zero q and zero gradient). Rows with w == 0 are never evaluated, so they may
hold anything (NaN, inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

F64 = torch.float64


@dataclass
class RefResult:
    loss: torch.Tensor  # reduced loss (0-dim) or, for reduction "none", per-token w*l shaped like labels
    per_token: torch.Tensor  # unweighted per-token loss l, shaped like labels (0 on invalid rows)
    weights: torch.Tensor  # w, shaped like labels
    q: torch.Tensor  # corrected target, full logits width (0 on padded columns and invalid rows)
    m: torch.Tensor  # mixing weight per token (0 on invalid rows)
    argmax: torch.Tensor  # teacher argmax per token (-1 on invalid rows)
    grad: torch.Tensor  # closed-form gradient w.r.t. student logits, full width, float64
    stats: dict  # teacher_accuracy, mixing_weight, student_ce, weight_sum (float64 0-dim)


def corrected_target_rows(teacher: torch.Tensor, labels: torch.Tensor, tau: float, temperature: float,
                          correct_all: bool, distill_only: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, m, a for 2-D float64 ``teacher`` [n, V] (only real columns) and 1-D valid ``labels``, row by row.

    ``distill_only``: no correction, q = p (plain distillation).
    """
    n, vocab = teacher.shape
    q = torch.zeros(n, vocab, dtype=F64)
    m_all = torch.zeros(n, dtype=F64)
    a_all = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        p = torch.softmax(teacher[i].to(F64) / temperature, dim=0)
        y = int(labels[i])
        # First index of the maximum probability (explicit, independent of torch.argmax tie rules).
        pmax = p.max()
        a = int(torch.nonzero(p == pmax)[0, 0])
        p_a, p_y = float(p[a]), float(p[y])
        onehot = torch.zeros(vocab, dtype=F64)
        onehot[y] = 1.0
        if distill_only:
            m, row = 0.0, p.clone()
        elif a != y:
            m = (p_a - p_y + tau) / (1.0 + p_a - p_y)
            # 1 - m written as the exact algebraic equivalent, so it is never a tiny negative (tau = 1).
            row = ((1.0 - tau) / (1.0 + p_a - p_y)) * p + m * onehot
        elif correct_all:
            c = 1.0 if p_y > 1.0 - tau else p_y + tau
            if c >= 1.0:
                m, row = 1.0, onehot
            else:
                m = (c - p_y) / (1.0 - p_y)
                row = ((1.0 - c) / (1.0 - p_y)) * p + m * onehot  # (1 - m) = (1 - c) / (1 - p_y)
        else:
            m, row = 0.0, p.clone()
        q[i], m_all[i], a_all[i] = row, m, a
    return q, m_all, a_all


def _weights(labels: torch.Tensor, loss_mask, ignore_index: int) -> torch.Tensor:
    w = torch.ones(labels.shape, dtype=F64) if loss_mask is None else loss_mask.detach().to(F64).clone()
    return torch.where(labels == ignore_index, torch.zeros((), dtype=F64), w)


def reference_mft(student, teacher, labels, *, tau=0.25, temperature=1.0, correct_all=True, ignore_index=-100,
                  loss_mask=None, vocab_size=None, reduction="mean", grad_output=None,
                  distill_only=False) -> RefResult:
    """Reference loss, q, closed-form gradient and stats.

    ``grad_output`` (reduction "none" only): upstream gradient shaped like labels (default ones).
    """
    T = float(temperature)
    width = student.shape[-1]
    vocab = width if vocab_size is None else int(vocab_size)
    lead = labels.shape
    s = student.detach().to(F64).reshape(-1, width)
    t = teacher.detach().to(F64).reshape(-1, width)
    y = labels.reshape(-1)
    w = _weights(labels, loss_mask, ignore_index).reshape(-1)
    valid = torch.nonzero(w != 0).flatten()

    n = y.numel()
    q_full = torch.zeros(n, width, dtype=F64)
    m_full = torch.zeros(n, dtype=F64)
    a_full = torch.full((n,), -1, dtype=torch.long)
    l_full = torch.zeros(n, dtype=F64)
    ce_full = torch.zeros(n, dtype=F64)
    grad_tok = torch.zeros(n, width, dtype=F64)  # T * (softmax(s/T) - q), per token, unweighted

    if valid.numel():
        sv, tv, yv = s[valid, :vocab], t[valid, :vocab], y[valid]
        q, m, a = corrected_target_rows(tv, yv, tau, T, correct_all, distill_only)
        logr = torch.log_softmax(sv / T, dim=-1)
        # 0 * log 0 = 0, also where the student assigns -inf (a column masked in both models).
        kl = torch.where(q > 0, q * (torch.log(q) - logr), torch.zeros((), dtype=F64)).sum(-1)
        l_full[valid] = T * T * kl
        q_full[valid, :vocab] = q
        m_full[valid], a_full[valid] = m, a
        grad_tok[valid, :vocab] = T * (torch.exp(logr) - q)
        ce_full[valid] = -torch.log_softmax(sv, dim=-1).gather(1, yv[:, None]).squeeze(1)

    wsum = w.sum()
    if reduction == "mean":
        scale = w / wsum if float(wsum) != 0 else torch.zeros_like(w)
        loss = (scale * l_full).sum()
    elif reduction == "sum":
        scale = w
        loss = (w * l_full).sum()
    elif reduction == "none":
        scale = w if grad_output is None else w * grad_output.detach().to(F64).reshape(-1)
        loss = (w * l_full).reshape(lead)
    else:
        raise ValueError(reduction)
    grad = grad_tok * scale[:, None]

    def wmean(x):
        return (w * x).sum() / wsum if float(wsum) != 0 else torch.zeros((), dtype=F64)

    stats = dict(
        teacher_accuracy=wmean((a_full == y).to(F64)),
        mixing_weight=wmean(m_full),
        student_ce=wmean(ce_full),
        weight_sum=wsum,
    )
    return RefResult(loss=loss, per_token=l_full.reshape(lead), weights=w.reshape(lead),
                     q=q_full.reshape(*lead, width), m=m_full.reshape(lead), argmax=a_full.reshape(lead),
                     grad=grad.reshape(*lead, width), stats=stats)


def reference_autograd(student, teacher, labels, *, tau=0.25, temperature=1.0, correct_all=True,
                       ignore_index=-100, loss_mask=None, vocab_size=None, reduction="mean", grad_output=None):
    """Same loss built from differentiable float64 ops; returns (loss, d loss / d student) via autograd.

    q is computed by ``corrected_target_rows`` (a constant, as in the method); the gradient then comes from
    torch autograd through log_softmax, independent of the closed form in ``reference_mft``.
    """
    T = float(temperature)
    width = student.shape[-1]
    vocab = width if vocab_size is None else int(vocab_size)
    s = student.detach().to(F64).clone().requires_grad_(True)
    s2 = s.reshape(-1, width)
    t2 = teacher.detach().to(F64).reshape(-1, width)
    y = labels.reshape(-1)
    w = _weights(labels, loss_mask, ignore_index).reshape(-1)
    valid = torch.nonzero(w != 0).flatten()
    per_tok = torch.zeros(y.numel(), dtype=F64)
    if valid.numel():
        q, _, _ = corrected_target_rows(t2[valid, :vocab], y[valid], tau, T, correct_all)
        logr = torch.log_softmax(s2[valid, :vocab] / T, dim=-1)
        kl = (torch.xlogy(q, q) - q * logr).sum(-1)
        per_tok = per_tok.index_put((valid,), T * T * kl)
    weighted = w * per_tok
    if reduction == "mean":
        loss = weighted.sum() / w.sum() if float(w.sum()) != 0 else weighted.sum() * 0.0
        out = loss
    elif reduction == "sum":
        loss = out = weighted.sum()
    else:
        out = weighted.reshape(labels.shape)
        g = torch.ones_like(weighted) if grad_output is None else grad_output.detach().to(F64).reshape(-1)
        loss = (weighted * g).sum()
    if not loss.requires_grad:  # no valid token: nothing depends on s
        return out.detach(), torch.zeros_like(s)
    (grad,) = torch.autograd.grad(loss, s)
    return out.detach(), grad
