"""The MFT math per token, as small tensor functions (no loops over chunks, no communication).

Notation (docs/method.md, section 1): teacher logits t, student logits s, temperature T, label y, margin tau.
p = softmax(t/T), a = argmax p, q = (1 - m) p + m e_y, loss = T^2 KL(q || softmax(s/T)).

The vocabulary may be split over tensor-parallel ranks. Each rank reduces its own columns to a few
numbers per token (`shard_statistics`); after one exchange, `combine_statistics` turns the statistics
of all shards into the global per-token quantities, including the loss in closed form:

    KL(q || r) = xlogy(P, P) (1 - p_y) + P [KL(p || r) - p_y (log p_y - log r_y)] + q_y (log q_y - log r_y)

with r = softmax(s/T), P = 1 - m, q_y = P p_y + m, and KL(p || r) = E_p[(t - s)/T] - lse_t + lse_s, where
E_p[(t - s)/T] is accumulated directly from the logit differences (accurate when p is close to r).
The second pass (`student_gradient`) only produces the gradient T (r - q).

Precision: a log-sum-exp is carried as its two parts, the row maximum M and log Z = log sum exp(x - M),
never as the sum M + log Z. With logits of size 3e4 an fp32 ulp is 2e-3, so rounding M + log Z would put
a relative error of 1e-3 on every probability; exp((x - M) - log Z) is exact to fp32 rounding instead,
because x - M is computed exactly. For the same reason a label logit is scaled by 1/T with the very same
fp32 operation (`scale_by_temperature`) that produced the maximum it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Columns of the per-shard statistics, one row per token, in the compute dtype (fp32 or fp64).
# Max/sum-exp pairs are "online softmax" partials: log-sum-exp = max + log(sumexp).
T_MAX = 0  # max_v t_v / T over this shard's real (non-padding) columns; -inf if it has none
T_SUMEXP = 1  # sum_v exp(t_v / T - T_MAX)
T_DIFF = 2  # sum_v exp(t_v / T - T_MAX) * (t_v - s_v) / T      (unnormalized E_p[(t - s) / T])
S_MAX = 3  # max_v s_v / T
S_SUMEXP = 4  # sum_v exp(s_v / T - S_MAX)
S1_MAX = 5  # max_v s_v               (temperature 1, for the student's cross-entropy)
S1_SUMEXP = 6  # sum_v exp(s_v - S1_MAX)
T_LABEL = 7  # t_y (unscaled) if this shard owns the label, else 0 (summed over shards)
S_LABEL = 8  # s_y if this shard owns the label, else 0
NUM_STATS = 9


class Scratch:
    """Reusable blocks for the temporaries of one pass, so that row blocks do not allocate.

    On CPU a fresh multi-MiB tensor costs page faults on first touch (measured: allocating exp(x - m)
    is ~8x slower than writing it into an existing buffer), so each named temporary keeps one buffer
    and hands out [n, v] views of it.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def block(self, name: str, n: int, v: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < n * v or buffer.dtype != dtype or buffer.device != like.device:
            buffer = torch.empty(n * v, dtype=dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[: n * v].view(n, v)


def scale_by_temperature(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x / T as every pass computes it (multiplication by the reciprocal; identity at T = 1)."""
    return x if temperature == 1.0 else x * (1.0 / temperature)


def scaled_logits(
    logits: torch.Tensor, temperature: float, compute_dtype: torch.dtype, scratch: Scratch, name: str
) -> torch.Tensor:
    """``scale_by_temperature(logits.to(compute_dtype))``, in a scratch block unless it is a no-op.

    Both passes scale through this function, so the values they compare are bit-identical.
    """
    if logits.dtype == compute_dtype and temperature == 1.0:
        return logits
    out = scratch.block(name, *logits.shape, like=logits, dtype=compute_dtype)
    if logits.dtype != compute_dtype:
        out.copy_(logits)
        return out.mul_(1.0 / temperature) if temperature != 1.0 else out
    return torch.mul(logits, 1.0 / temperature, out=out)


def _row_logsumexp_parts(
    x: torch.Tensor, scratch: Scratch, x_max: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, v] -> (row max, sum exp(x - max)); the exponentials stay in scratch block "exp"."""
    if x_max is None:
        x_max = x.amax(dim=-1)
    exps = torch.sub(x, x_max.unsqueeze(-1), out=scratch.block("exp", *x.shape, like=x, dtype=x.dtype)).exp_()
    return x_max, exps.sum(-1)


def shard_statistics(
    student: torch.Tensor,
    teacher: torch.Tensor,
    local_labels: torch.Tensor,
    temperature: float,
    compute_dtype: torch.dtype,
    scratch: Scratch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce one block of a vocab shard to per-token statistics (pass 1).

    Args:
        student, teacher: [n, v] logits of this shard's real columns only (padding already cut off);
            v may be 0 for a shard that holds only padding.
        local_labels: [n] int64 label minus the shard's first global column; outside [0, v) when the
            shard does not own the label (or the token is ignored).
        temperature: T.
        compute_dtype: fp32, or fp64 for fp64 inputs.
        scratch: buffers reused across calls (a fresh one if None).

    Returns:
        stats: [n, NUM_STATS] in compute_dtype (columns above).
        argmax: [n] int64 local index of the first maximum of t (0 if v == 0; T_MAX is then -inf).
    """
    n, v = student.shape
    stats = torch.zeros(n, NUM_STATS, dtype=compute_dtype, device=student.device)
    if v == 0:
        stats[:, [T_MAX, S_MAX, S1_MAX]] = float("-inf")
        return stats, torch.zeros(n, dtype=torch.int64, device=student.device)
    scratch = scratch if scratch is not None else Scratch()

    t = scaled_logits(teacher, temperature, compute_dtype, scratch, "teacher")
    s = scaled_logits(student, temperature, compute_dtype, scratch, "student")

    t_max, argmax = t.max(dim=-1)  # first index on ties, like torch.argmax
    stats[:, T_MAX], stats[:, T_SUMEXP] = _row_logsumexp_parts(t, scratch, t_max)
    t_exp = scratch.block("exp", n, v, like=t, dtype=compute_dtype)
    diff = torch.sub(t, s, out=scratch.block("diff", n, v, like=t, dtype=compute_dtype))
    weighted_diff = torch.linalg.vecdot(t_exp, diff)
    # Columns where the teacher has no mass contribute nothing, even where t - s is -inf - (-inf) = NaN;
    # such rows are rare, so they are redone with an explicit mask instead of masking every row.
    redo = (torch.isnan(weighted_diff) & torch.isfinite(t_max)).nonzero().squeeze(-1)
    if redo.numel():
        mass = t_exp[redo] > 0
        weighted_diff[redo] = torch.where(mass, t_exp[redo] * diff[redo], 0.0).sum(-1)
    stats[:, T_DIFF] = weighted_diff

    stats[:, S_MAX], stats[:, S_SUMEXP] = _row_logsumexp_parts(s, scratch)
    if temperature != 1.0:
        s1 = scaled_logits(student, 1.0, compute_dtype, scratch, "student")
        stats[:, S1_MAX], stats[:, S1_SUMEXP] = _row_logsumexp_parts(s1, scratch)
    else:
        stats[:, S1_MAX] = stats[:, S_MAX]
        stats[:, S1_SUMEXP] = stats[:, S_SUMEXP]

    owned = (local_labels >= 0) & (local_labels < v)
    index = torch.where(owned, local_labels, 0).unsqueeze(-1)
    stats[:, T_LABEL] = torch.where(owned, teacher.gather(-1, index).squeeze(-1).to(compute_dtype), 0.0)
    stats[:, S_LABEL] = torch.where(owned, student.gather(-1, index).squeeze(-1).to(compute_dtype), 0.0)
    return stats, argmax


def _combine_logsumexp(maxes: torch.Tensor, sumexps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, N] per-shard (max, sumexp) -> ([N] global max, [R, N] rescale factor of each shard)."""
    global_max = maxes.amax(dim=0)
    # exp(-inf - finite) = 0 for empty shards; a row whose global max is not finite stays non-finite.
    scale = torch.exp(maxes - global_max)
    return global_max, scale


@dataclass
class TokenTargets:
    """Global per-token quantities, identical on every tensor-parallel rank. All [N], compute dtype.

    teacher_max, teacher_log_norm: max_v t_v/T and log sum_v exp(t_v/T - teacher_max) over the whole
        (unpadded) vocabulary, so log p_v = (t_v/T - teacher_max) - teacher_log_norm.
    student_max, student_log_norm: the same for s/T.
    mix: the mixing weight m of q = (1 - m) p + m e_y.
    loss: T^2 KL(q || softmax(s/T)) per token (unweighted; garbage on rows that are not valid).
    student_ce: -log softmax(s)_y at temperature 1.
    teacher_correct: 1.0 where argmax p == y.
    """

    teacher_max: torch.Tensor
    teacher_log_norm: torch.Tensor
    student_max: torch.Tensor
    student_log_norm: torch.Tensor
    mix: torch.Tensor
    loss: torch.Tensor
    student_ce: torch.Tensor
    teacher_correct: torch.Tensor

    def rows(self, index: torch.Tensor | slice) -> "TokenTargets":
        """The same targets for a subset of tokens."""
        return TokenTargets(*(getattr(self, f.name)[index] for f in fields(self)))

    def finite(self) -> torch.Tensor:
        """[N] bool: every per-token quantity is finite (false for a row with a non-finite logit)."""
        ok = torch.isfinite(self.loss)
        for value in (self.teacher_max, self.teacher_log_norm, self.student_max, self.student_log_norm):
            ok &= torch.isfinite(value)
        return ok


def mixing_weight(
    p_argmax: torch.Tensor, p_label: torch.Tensor, teacher_correct: torch.Tensor, tau: float, correct_all: bool,
    distill_only: bool = False,
) -> torch.Tensor:
    """m per token (docs/method.md, section 1): wrong rows reach q_y - q_a = tau; right rows reach q_y = c.

    ``distill_only``: m = 0 everywhere (q = p, plain distillation).
    """
    if distill_only:
        return torch.zeros_like(p_label)
    gap = p_argmax - p_label  # >= 0
    mix_wrong = (gap + tau) / (1.0 + gap)
    if not correct_all:
        return torch.where(teacher_correct, torch.zeros_like(mix_wrong), mix_wrong)
    # c = 1 (one-hot, m = 1) if p_y > 1 - tau, else c = p_y + tau and m = tau / (1 - p_y); in that branch
    # 1 - p_y >= tau, so the clamp only matters for tau = 0 and p_y = 1, where m = 0 is exact.
    tiny = torch.finfo(p_label.dtype).tiny
    mix_right = torch.where(p_label > 1.0 - tau, torch.ones_like(p_label), tau / (1.0 - p_label).clamp_min(tiny))
    return torch.where(teacher_correct, mix_right, mix_wrong)


def combine_statistics(
    stats: torch.Tensor,
    argmax: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    tau: float,
    correct_all: bool,
    distill_only: bool = False,
) -> TokenTargets:
    """Global per-token targets and loss from the statistics of every shard.

    Args:
        stats: [R, N, NUM_STATS] statistics of the R vocab shards, in rank order.
        argmax: [R, N] int64 GLOBAL column index of each shard's teacher maximum.
        labels: [N] int64 global label ids (any value on ignored rows).
    """
    temp = temperature
    t_max, t_scale = _combine_logsumexp(stats[..., T_MAX], stats[..., T_SUMEXP])
    t_sumexp = (stats[..., T_SUMEXP] * t_scale).sum(0)
    log_zt = torch.log(t_sumexp)
    expected_diff = (stats[..., T_DIFF] * t_scale).sum(0) / t_sumexp  # E_p[(t - s) / T]

    s_max, s_scale = _combine_logsumexp(stats[..., S_MAX], stats[..., S_SUMEXP])
    log_zs = torch.log((stats[..., S_SUMEXP] * s_scale).sum(0))
    s1_max, s1_scale = _combine_logsumexp(stats[..., S1_MAX], stats[..., S1_SUMEXP])
    log_zs1 = torch.log((stats[..., S1_SUMEXP] * s1_scale).sum(0))

    t_label = stats[..., T_LABEL].sum(0)
    s_label = stats[..., S_LABEL].sum(0)

    # Global argmax: the largest shard maximum, ties to the lowest rank (= lowest global index).
    winner = (stats[..., T_MAX] == t_max).to(torch.uint8).argmax(dim=0)
    teacher_argmax = argmax.gather(0, winner.unsqueeze(0)).squeeze(0)
    teacher_correct = teacher_argmax == labels

    log_p_label = (scale_by_temperature(t_label, temp) - t_max) - log_zt
    log_r_label = (scale_by_temperature(s_label, temp) - s_max) - log_zs
    p_label = torch.exp(log_p_label)
    p_argmax = torch.exp(-log_zt)
    mix = mixing_weight(p_argmax, p_label, teacher_correct, tau, correct_all, distill_only)

    keep = 1.0 - mix
    q_label = keep * p_label + mix
    kl_p_r = expected_diff + (s_max - t_max) + (log_zs - log_zt)
    label_term_p = torch.where(p_label > 0, p_label * (log_p_label - log_r_label), 0.0)
    label_term_q = torch.where(q_label > 0, torch.xlogy(q_label, q_label) - q_label * log_r_label, 0.0)
    kl = torch.xlogy(keep, keep) * (1.0 - p_label) + keep * (kl_p_r - label_term_p) + label_term_q
    return TokenTargets(
        teacher_max=t_max,
        teacher_log_norm=log_zt,
        student_max=s_max,
        student_log_norm=log_zs,
        mix=mix,
        loss=kl * (temp * temp),
        student_ce=(s1_max - s_label) + log_zs1,
        teacher_correct=teacher_correct.to(stats.dtype),
    )


def student_gradient(
    student: torch.Tensor,
    teacher: torch.Tensor,
    local_labels: torch.Tensor,
    targets: TokenTargets,
    coef: torch.Tensor,
    temperature: float,
    out: torch.Tensor,
    scratch: Scratch | None = None,
) -> torch.Tensor:
    """d loss / d s for one block of a shard (pass 2): coef * T * (softmax(s/T) - q), written into ``out``.

    Computed as exp(s/T - max_s) * (c T / Z_s) - exp(t/T - max_t) * (c T (1 - m) / Z_t), minus c T m on
    the label column, in the compute dtype of ``targets``, and rounded once into ``out``.

    Args:
        student, teacher: [n, v] real columns of the shard.
        local_labels: [n] as in `shard_statistics`.
        targets: `combine_statistics` output restricted to these n rows (see `TokenTargets.rows`).
        coef: [n] token weight / normalizer; rows with coef == 0 get an exact zero gradient, whatever
            their logits hold.
        out: [n, v] destination of any float dtype; it may be ``student`` itself (in place: each element
            is read before it is written).
        scratch: buffers reused across calls (a fresh one if None).

    Returns:
        ``out``.
    """
    n, v = student.shape
    compute_dtype = targets.mix.dtype
    scratch = scratch if scratch is not None else Scratch()
    s = scaled_logits(student, temperature, compute_dtype, scratch, "student")
    t = scaled_logits(teacher, temperature, compute_dtype, scratch, "teacher")
    scale = coef * temperature
    student_coef = scale * torch.exp(-targets.student_log_norm)
    teacher_coef = scale * (1.0 - targets.mix) * torch.exp(-targets.teacher_log_norm)

    grad = out if out.dtype == compute_dtype else scratch.block("grad", n, v, like=out, dtype=compute_dtype)
    torch.sub(s, targets.student_max.unsqueeze(-1), out=grad).exp_().mul_(student_coef.unsqueeze(-1))
    teacher_exp = torch.sub(t, targets.teacher_max.unsqueeze(-1), out=scratch.block("exp", n, v, like=t, dtype=compute_dtype))
    grad.addcmul_(teacher_exp.exp_(), teacher_coef.unsqueeze(-1), value=-1.0)
    owned = ((local_labels >= 0) & (local_labels < v)).nonzero().squeeze(-1)
    grad[owned, local_labels[owned]] -= (scale * targets.mix)[owned]
    # exp of a non-finite logit times 0 is NaN: rows without weight are cleared explicitly.
    grad.index_fill_(0, (scale == 0).nonzero().squeeze(-1), 0.0)
    if grad is not out:
        out.copy_(grad)
    return out
