"""The exact, vocab-parallel MFT loss (math, autograd Function, functional and module entries)."""

from nemo_mft.loss.functional import MFTStats, corrected_target, mft_loss
from nemo_mft.loss.module import MFTLoss
from nemo_mft.loss.options import MFTOptions

__all__ = ["MFTLoss", "MFTOptions", "MFTStats", "corrected_target", "mft_loss"]
