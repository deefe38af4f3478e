"""TEST-ONLY: the base of every placeholder class of the `transformer_engine` stand-in."""

import torch


class Placeholder(torch.nn.Module):
    """A TransformerEngine class name with no implementation: constructing one raises.

    It is a ``torch.nn.Module`` subclass so that Bridge can subclass it and use it in ``isinstance`` checks; no
    megatron-core layer is ever an instance of it (megatron-core took its non-TE paths before the stand-in existed).
    """

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f"{type(self).__name__}: TEST-ONLY transformer_engine stand-in (tests/bridge/stand_ins); "
            "this code path needs the real TransformerEngine"
        )
