"""Checks of the loss inputs that raise a clear ValueError instead of a NaN or a crash deep inside."""

from __future__ import annotations

import torch


def _position(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    """Unravel a flat index into a position of ``shape`` (for error messages)."""
    position = []
    for extent in reversed(shape):
        position.append(flat_index % extent)
        flat_index //= extent
    return tuple(reversed(position))


def first_positions(bad: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """(number of True entries, position of the first one) of a bool tensor with at least one True."""
    flat = bad.reshape(-1)
    count = int(flat.sum())
    first = int(flat.to(torch.uint8).argmax())
    return count, _position(first, bad.shape)


def check_shapes(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None
) -> None:
    """Logits [..., V_local] of equal shape, labels [...] integer, loss_mask [...] like labels."""
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise ValueError(f"logits must be floating point, got student {student.dtype} and teacher {teacher.dtype}")
    if student.dim() < 1 or student.shape[-1] < 1:
        raise ValueError(f"logits must have a vocabulary dimension last, got shape {tuple(student.shape)}")
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student and teacher vocab shards differ in width: {student.shape[-1]} vs {teacher.shape[-1]} "
            "(both must be this rank's shard of the same padded vocabulary)"
        )
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in shape")
    if labels.shape != student.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits' leading shape {tuple(student.shape[:-1])}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    if loss_mask is not None and loss_mask.shape != labels.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} must equal the labels' shape {tuple(labels.shape)}")
    if student.device != teacher.device or labels.device != student.device or (
        loss_mask is not None and loss_mask.device != student.device
    ):
        raise ValueError("student logits, teacher logits, labels and loss_mask must be on the same device")


def resolve_vocab_size(vocab_size: int | None, local_width: int, tp_size: int) -> int:
    """True vocabulary size; columns at or beyond it are padding."""
    total = local_width * tp_size
    if vocab_size is None:
        return total
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if vocab_size > total:
        raise ValueError(
            f"vocab_size {vocab_size} exceeds the logits' padded vocabulary {total} "
            f"({local_width} columns per shard x {tp_size} tensor-parallel ranks)"
        )
    return vocab_size


def check_labels_and_weights(
    labels: torch.Tensor, weights: torch.Tensor, ignore_index: int | None, vocab_size: int
) -> None:
    """Labels in [0, vocab_size) unless equal to ignore_index (None: no label is ignored); weights
    finite and non-negative. One host sync."""
    bad_labels = (labels < 0) | (labels >= vocab_size)
    if ignore_index is not None:
        bad_labels &= labels != ignore_index
    bad_weights = ~torch.isfinite(weights) | (weights < 0)
    any_bad_labels, any_bad_weights = torch.stack([bad_labels.any(), bad_weights.any()]).tolist()
    if any_bad_labels:
        count, position = first_positions(bad_labels)
        value = int(labels[position])
        ignored = "" if ignore_index is None else f" that are not ignore_index={ignore_index}"
        raise ValueError(
            f"{count} label(s) outside [0, {vocab_size}){ignored}; "
            f"first at position {position} with value {value}"
        )
    if any_bad_weights:
        count, position = first_positions(bad_weights)
        raise ValueError(
            f"loss_mask must hold finite non-negative weights: {count} bad value(s), first at position "
            f"{position} with value {float(weights[position])}"
        )


def check_finite_tokens(finite: torch.Tensor, valid: torch.Tensor, shape: torch.Size) -> None:
    """Raise if a valid token's statistics are not finite (NaN/inf logits, or an all -inf row)."""
    bad = valid & ~finite
    if bool(bad.any()):
        count, position = first_positions(bad.reshape(shape))
        raise ValueError(
            f"non-finite logits: {count} valid token(s) have NaN or +inf student/teacher logits, a row "
            f"that is all -inf, or a student -inf where the target has mass; first at position {position}"
        )
