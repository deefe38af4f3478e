"""nemo-mft: Minifinetuning (MFT) for megatron-core and Megatron-Bridge training."""

from nemo_mft.loss import MFTLoss, MFTOptions, MFTStats, corrected_target, mft_loss

__version__ = "0.1.0"

__all__ = ["MFTLoss", "MFTOptions", "MFTStats", "corrected_target", "mft_loss", "__version__"]
