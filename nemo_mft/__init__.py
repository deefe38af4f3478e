"""nemo-mft: Minifinetuning (MFT) for megatron-core and Megatron-Bridge training.

Importing the package wires the layers together: the fused Triton kernels (`nemo_mft.kernels`, imported
only when first used) are registered as the loss's ``impl="triton"`` backend, so that `nemo_mft.loss`
never imports the layer above it.
"""

from nemo_mft.loss import MFTLoss, MFTOptions, MFTStats, corrected_target, mft_loss
from nemo_mft.loss import backends as _backends


def _triton_backend() -> "_backends.Backend":
    from nemo_mft.kernels.triton_backend import TritonBackend

    return TritonBackend(fallback=_backends.TorchBackend())


_backends.register_backend("triton", _triton_backend)

__version__ = "0.1.0"

__all__ = ["MFTLoss", "MFTOptions", "MFTStats", "corrected_target", "mft_loss", "__version__"]
