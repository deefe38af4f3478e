"""The two fused Triton kernels of the MFT loss (launched from `nemo_mft.kernels.triton_backend`).

Both kernels see one tensor-parallel vocabulary shard: row-major logits [N, V_local] (column stride 1,
any row stride) whose first ``real_width`` columns are real vocabulary and the rest padding. Math is
fp32 whatever the logits' dtype; offsets are int64 (``tl.program_id(0)`` is cast before it multiplies
a row stride), so N * V_local may exceed 2^31.

Pass 1, `mft_statistics_kernel`, grid (N,): one program streams one row of student and teacher logits
once, BLOCK columns at a time, and writes the row's NUM_STATS fp32 statistics (columns defined in
`nemo_mft.loss.formulas`) plus the local teacher argmax. Nothing vocab-sized is written.

Online softmax (used for t/T, s/T and, when T != 1, s at temperature 1). For values x_1..x_V the
kernel keeps a running maximum M and a running sum Z = sum_{seen} exp(x_v - M). A new block B with
maximum b gives M' = max(M, b) and

    Z' = Z * exp(M - M') + sum_{v in B} exp(x_v - M')

so that at the end M + log Z is the log-sum-exp. The teacher's weighted difference
D = sum exp(t_v/T - M) (t_v - s_v)/T is rescaled by the same factor exp(M - M'). While every value
seen is -inf, M' = -inf and x - M' would be (-inf) - (-inf) = NaN: the kernel then subtracts 0
instead of M' (all terms are exp(-inf) = 0 and the old sums are 0, so nothing changes). Masked tail
and padding columns load as -inf and contribute 0 to every sum.

Pass 2, `mft_gradient_kernel`, grid (N, cdiv(V_local, BLOCK)): one program re-reads one block of one
row and writes

    grad_v = coef * T * (softmax(s/T)_v - (1 - m) softmax(t/T)_v - m [v == y])

in fp32, rounded once to the output's dtype. The output may be the student buffer itself (the
gradient then overwrites the logits in place): every element is read and then written by the same
program, and no program reads another's columns. Padding columns and rows with coef == 0 get exact
zeros without their logits being read (they may hold NaN/inf).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Column indices of the statistics (nemo_mft.loss.formulas), as kernel constants; triton_backend
# asserts that they agree with formulas.
T_MAX = tl.constexpr(0)
T_SUMEXP = tl.constexpr(1)
T_DIFF = tl.constexpr(2)
S_MAX = tl.constexpr(3)
S_SUMEXP = tl.constexpr(4)
S1_MAX = tl.constexpr(5)
S1_SUMEXP = tl.constexpr(6)
T_LABEL = tl.constexpr(7)
S_LABEL = tl.constexpr(8)
NUM_STATS = tl.constexpr(9)


@triton.jit
def _online_max(x, run_max):
    """Online-softmax step (module docstring) for a block x [BLOCK] of fp32 values.

    Returns (new running max M', the value to subtract from x (M', or 0 while M' is -inf), and
    exp(M - M'), the factor that rescales the sums accumulated so far).
    """
    new_max = tl.maximum(run_max, tl.max(x, axis=0))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    return new_max, shift, tl.exp(run_max - shift)


@triton.jit
def mft_statistics_kernel(
    student_ptr,  # [N, V_local] student logits (any float dtype), column stride 1
    teacher_ptr,  # [N, V_local] teacher logits, column stride 1
    labels_ptr,  # [N] int64 local label (global label - shard offset); outside [0, real_width) if not owned
    stats_ptr,  # [N, NUM_STATS] fp32 output, contiguous (columns: the constants above)
    argmax_ptr,  # [N] int64 output: local index of the first teacher maximum (0 if none)
    stride_student,  # row strides, in elements
    stride_teacher,
    real_width,  # columns [0, real_width) are real vocabulary; the rest are not read
    inv_temperature,  # fp32 1 / T
    SEPARATE_T1: tl.constexpr,  # T != 1: also accumulate the student's statistics at temperature 1
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    student_row = student_ptr + row * stride_student
    teacher_row = teacher_ptr + row * stride_teacher
    offsets = tl.arange(0, BLOCK)

    zero = tl.zeros([], dtype=tl.float32)
    t_max = zero + float("-inf")
    t_sum = zero
    t_diff = zero
    s_max = zero + float("-inf")
    s_sum = zero
    s1_max = zero + float("-inf")
    s1_sum = zero
    t_arg = tl.zeros([], dtype=tl.int32)

    for start in range(0, real_width, BLOCK):
        cols = start + offsets
        mask = cols < real_width
        t_raw = tl.load(teacher_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        s_raw = tl.load(student_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        t = t_raw * inv_temperature
        s = s_raw * inv_temperature

        # Teacher argmax, torch tie-breaking: the lowest column holding the maximum. A later block
        # replaces it only if its maximum is strictly larger.
        block_max = tl.max(t, axis=0)
        block_arg = tl.min(tl.where(t == block_max, cols, real_width), axis=0)
        t_arg = tl.where(block_max > t_max, block_arg, t_arg)

        t_max, shift, alpha = _online_max(t, t_max)
        t_exp = tl.exp(t - shift)
        t_sum = t_sum * alpha + tl.sum(t_exp, axis=0)
        # Columns without teacher mass contribute nothing, even if t - s is NaN or inf there
        # (masked lanes: (-inf) - (-inf)).
        t_diff = t_diff * alpha + tl.sum(tl.where(t_exp > 0, t_exp * (t - s), 0.0), axis=0)

        s_max, shift, alpha = _online_max(s, s_max)
        s_sum = s_sum * alpha + tl.sum(tl.exp(s - shift), axis=0)
        if SEPARATE_T1:
            s1_max, shift, alpha = _online_max(s_raw, s1_max)
            s1_sum = s1_sum * alpha + tl.sum(tl.exp(s_raw - shift), axis=0)

    if not SEPARATE_T1:
        s1_max = s_max
        s1_sum = s_sum

    # Raw label logits if this shard owns the label (one scalar load each), else 0.
    label = tl.load(labels_ptr + row)
    owned = (label >= 0) & (label < real_width)
    safe_label = tl.where(owned, label, 0)
    t_label = tl.load(teacher_row + safe_label, mask=owned, other=0.0).to(tl.float32)
    s_label = tl.load(student_row + safe_label, mask=owned, other=0.0).to(tl.float32)
    t_label = tl.where(owned, t_label, 0.0)
    s_label = tl.where(owned, s_label, 0.0)

    out = stats_ptr + row * NUM_STATS
    tl.store(out + T_MAX, t_max)
    tl.store(out + T_SUMEXP, t_sum)
    tl.store(out + T_DIFF, t_diff)
    tl.store(out + S_MAX, s_max)
    tl.store(out + S_SUMEXP, s_sum)
    tl.store(out + S1_MAX, s1_max)
    tl.store(out + S1_SUMEXP, s1_sum)
    tl.store(out + T_LABEL, t_label)
    tl.store(out + S_LABEL, s_label)
    tl.store(argmax_ptr + row, t_arg.to(tl.int64))


@triton.jit
def mft_gradient_kernel(
    student_ptr,  # [N, V_local] student logits, column stride 1
    teacher_ptr,  # [N, V_local] teacher logits, column stride 1
    grad_ptr,  # [N, V_local] output (may be student_ptr: in place), column stride 1; its dtype rounds once
    labels_ptr,  # [N] int64 local label, as in pass 1
    norms_ptr,  # [N, 4] fp32 rows (max t/T, log Z_t, max s/T, log Z_s), as in formulas.TokenTargets
    mix_ptr,  # [N] fp32 mixing weight m
    coef_ptr,  # [N] fp32 token weight / normalizer (0: row gets zeros)
    stride_student,
    stride_teacher,
    stride_grad,
    real_width,
    width,  # V_local: columns [real_width, width) are padding and get zeros
    inv_temperature,  # fp32 1 / T
    temperature,  # fp32 T
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)

    scale = tl.load(coef_ptr + row) * temperature
    # Real columns of a row with a non-zero coefficient (a scalar bound, not a mask & scalar).
    live = cols < tl.where(scale != 0, real_width, 0)
    s = tl.load(student_ptr + row * stride_student + cols, mask=live, other=0.0).to(tl.float32) * inv_temperature
    t = tl.load(teacher_ptr + row * stride_teacher + cols, mask=live, other=0.0).to(tl.float32) * inv_temperature
    t_max = tl.load(norms_ptr + row * 4)
    t_log_norm = tl.load(norms_ptr + row * 4 + 1)
    s_max = tl.load(norms_ptr + row * 4 + 2)
    s_log_norm = tl.load(norms_ptr + row * 4 + 3)
    mix = tl.load(mix_ptr + row)
    label = tl.load(labels_ptr + row)

    # exp((x - max) - log Z), never exp(x - (max + log Z)): see the precision note in formulas.py.
    grad = tl.exp((s - s_max) - s_log_norm) - (1.0 - mix) * tl.exp((t - t_max) - t_log_norm)
    grad = tl.where(cols == label, grad - mix, grad)
    grad = tl.where(live, grad * scale, 0.0)
    tl.store(grad_ptr + row * stride_grad + cols, grad.to(grad_ptr.dtype.element_ty), mask=cols < width)
