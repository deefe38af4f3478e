"""nemo_mft.megatron.cpu_compat: redirects CUDA calls on a CPU-only machine, and never acts with CUDA."""

from __future__ import annotations

import torch

import nemo_mft.megatron.cpu_compat as cpu_compat


def test_never_activates_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(cpu_compat, "_ENABLED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    current_device, synchronize = torch.cuda.current_device, torch.cuda.synchronize
    mode = cpu_compat._MODE
    assert cpu_compat.enable_cpu_fallback() is False
    assert not cpu_compat.cpu_fallback_enabled()
    assert torch.cuda.current_device is current_device and torch.cuda.synchronize is synchronize
    assert cpu_compat._MODE is mode


def test_redirects_cuda_devices_in_spawned_ranks(megatron_job):
    out = megatron_job["cpu_compat"]
    assert out["enabled"] and out["again"], "init_distributed() must enable the fallback without CUDA (idempotently)"
    assert out["cuda_available"] is False, "the fallback must not pretend that CUDA exists"
    for key in ("factory_device", "int_device", "to_device", "cuda_method"):
        assert out[key] == "cpu", key
