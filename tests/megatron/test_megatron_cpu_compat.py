"""nemo_mft.megatron.cpu_compat: megatron_on_cpu redirects CUDA calls on a CPU-only machine inside its block,
undoes it on exit, and never acts with CUDA."""

from __future__ import annotations

import torch

import nemo_mft.megatron.cpu_compat as cpu_compat


def test_never_activates_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    current_device, synchronize = torch.cuda.current_device, torch.cuda.synchronize
    with cpu_compat.megatron_on_cpu() as active:
        assert active is False and not cpu_compat.cpu_fallback_active()
        assert torch.cuda.current_device is current_device and torch.cuda.synchronize is synchronize


def test_importing_changes_nothing_and_exit_restores_everything():
    import megatron.core.optimizer.optimizer as megatron_optimizer

    originals = (torch.cuda.current_device, torch.cuda.manual_seed, megatron_optimizer.clip_grad_by_total_norm_fp32)
    assert not cpu_compat.cpu_fallback_active()
    with cpu_compat.megatron_on_cpu() as active:
        assert active and cpu_compat.cpu_fallback_active()
        assert torch.cuda.current_device() == 0
        assert torch.zeros(1, device="cuda").device.type == "cpu"
        with cpu_compat.megatron_on_cpu():  # nested: still active, and leaving it keeps the outer block's
            pass
        assert torch.ones(1).cuda().device.type == "cpu"
    assert not cpu_compat.cpu_fallback_active()
    assert (torch.cuda.current_device, torch.cuda.manual_seed,
            megatron_optimizer.clip_grad_by_total_norm_fp32) == originals


def test_exit_restores_after_an_error():
    current_device = torch.cuda.current_device
    try:
        with cpu_compat.megatron_on_cpu():
            raise KeyError("inside")
    except KeyError:
        pass
    assert torch.cuda.current_device is current_device and not cpu_compat.cpu_fallback_active()


def test_redirects_cuda_devices_in_spawned_ranks(megatron_job):
    out = megatron_job["cpu_compat"]
    assert out["enabled"] and out["again"], "the spawned ranks run their sections inside megatron_on_cpu()"
    assert out["cuda_available"] is False, "the fallback must not pretend that CUDA exists"
    for key in ("factory_device", "int_device", "to_device", "cuda_method"):
        assert out[key] == "cpu", key
    for key in ("cpu_compat_outside", "cpu_compat_after"):
        outside = megatron_job[key]
        assert outside["active"] is False and outside["current_device_patched"] == "torch.cuda", key
        assert outside["redirected"] is False, key
