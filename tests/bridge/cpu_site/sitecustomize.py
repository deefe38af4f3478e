"""TEST-ONLY: run `nemo-mft bridge` on a CPU machine. A test puts this folder on PYTHONPATH and sets
NEMO_MFT_BRIDGE_CPU_HARNESS=1; then every process torchrun starts (one with RANK in its environment) installs the
TEST-ONLY TransformerEngine stand-in and the CPU patches of tests/bridge/cpu_bridge.py before its program runs, and
initialises the default gloo process group from torchrun's variables (Bridge then skips its NCCL-only set-up).
Without the variable, in the torchrun agent itself, and in any process a worker starts (a spawned helper such as
dist-checkpointing's multiprocessing Manager inherits RANK, and must not join the process group again) it does
nothing. Never part of the package."""

import os
import sys

if (os.environ.get("NEMO_MFT_BRIDGE_CPU_HARNESS") == "1" and "RANK" in os.environ
        and "NEMO_MFT_BRIDGE_CPU_HARNESS_WORKER" not in os.environ):
    os.environ["NEMO_MFT_BRIDGE_CPU_HARNESS_WORKER"] = str(os.getpid())  # inherited: children skip this block
    _BRIDGE_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, _BRIDGE_TESTS)
    import atexit

    import torch

    import cpu_bridge

    torch.set_num_threads(1)
    cpu_bridge.install_stand_ins()
    torch.distributed.init_process_group("gloo")
    _ON_CPU = cpu_bridge.bridge_on_cpu()
    _ON_CPU.__enter__()
    atexit.register(lambda: torch.distributed.is_initialized() and torch.distributed.destroy_process_group())
