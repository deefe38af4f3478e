"""fused_input_norm: what LoRA puts in front of its adapter on TransformerEngine's LayerNorm+Linear layers.

TE cannot be installed on CPU machines, so the layer here carries only the attributes of TE's
``LayerNormLinear`` that the function reads (``normalization``, ``eps``, ``zero_centered_gamma``,
``layer_norm_weight``, ``layer_norm_bias``; the names Megatron-Bridge's LoRA reads too). The whole TE path
(TE-spec training with LoRA against the local spec) is tests/finetune/test_finetune_transformer_engine.py,
which runs where TE and a GPU are.
"""

from __future__ import annotations

import pytest
import torch

from nemo_mft.peft.lora import fused_input_norm

HIDDEN = 16


class _LayerNormLinearAttributes(torch.nn.Module):
    """TEST-ONLY: the norm attributes of transformer_engine.pytorch.LayerNormLinear, nothing else."""

    def __init__(self, normalization: str, eps: float, zero_centered_gamma: bool):
        super().__init__()
        self.normalization, self.eps, self.zero_centered_gamma = normalization, eps, zero_centered_gamma
        self.layer_norm_weight = torch.nn.Parameter(torch.randn(HIDDEN))
        self.layer_norm_bias = torch.nn.Parameter(torch.randn(HIDDEN)) if normalization == "LayerNorm" else None


@pytest.mark.parametrize("normalization", ["RMSNorm", "LayerNorm"])
@pytest.mark.parametrize("zero_centered_gamma", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_adapter_sees_the_layers_normalized_input(normalization, zero_centered_gamma, dtype):
    layer = _LayerNormLinearAttributes(normalization, 1e-5, zero_centered_gamma)
    gamma = layer.layer_norm_weight.detach().double() + (1.0 if zero_centered_gamma else 0.0)
    reference = (torch.nn.RMSNorm(HIDDEN, eps=1e-5) if normalization == "RMSNorm"
                 else torch.nn.LayerNorm(HIDDEN, eps=1e-5)).double()
    with torch.no_grad():
        reference.weight.copy_(gamma)
        if normalization == "LayerNorm":
            reference.bias.copy_(layer.layer_norm_bias.detach().double())
    x = (3.0 * torch.randn(5, 2, HIDDEN, generator=torch.Generator().manual_seed(0)) + 1.0).to(dtype)
    out = fused_input_norm(layer)(x)
    assert out.dtype == dtype and out.shape == x.shape
    expected = reference(x.double()).to(dtype)
    torch.testing.assert_close(out, expected, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-5)


def test_gradients_reach_the_input_through_the_norm():
    """Earlier layers' adapters train through this norm: the input gets a gradient (the norm's weight is
    frozen base weight and is read, not copied)."""
    layer = _LayerNormLinearAttributes("RMSNorm", 1e-6, False)
    x = torch.randn(3, HIDDEN, requires_grad=True)
    norm = fused_input_norm(layer)
    before = norm(x)
    before.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        layer.layer_norm_weight.mul_(2.0)
    torch.testing.assert_close(norm(x), 2.0 * before, msg="the layer's current weight is used")


def test_layers_without_a_fused_norm_get_none_and_unknown_norms_are_refused():
    assert fused_input_norm(torch.nn.Linear(4, 4)) is None
    layer = _LayerNormLinearAttributes("RMSNorm", 1e-5, False)
    layer.normalization = "L2Norm"
    with pytest.raises(ValueError, match="LoRA on a fused L2Norm layer is not supported"):
        fused_input_norm(layer)
