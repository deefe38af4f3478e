"""Fused Triton kernels of the MFT loss.

`mft_kernels` holds the two kernels (pass 1: per-token statistics; pass 2: the gradient, optionally in
place); `triton_backend.TritonBackend` launches them behind the `nemo_mft.loss.backends.Backend`
protocol. Nothing is imported here, so that `nemo_mft` works without Triton; use
``mft_loss(..., impl="triton")`` (or ``impl="auto"`` on CUDA tensors).
"""
