"""``nemo-mft bridge``: a Megatron-Bridge recipe trained by Bridge's own ``finetune()`` with the MFT objective.

    nemo-mft bridge --recipe megatron.bridge.recipes.llama.llama3:llama32_1b_sft_config \\
        --config-file conf/bridge/llama32_1b_mft.yaml mft.tau=0.1 train.train_iters=100
    torchrun --nproc_per_node=8 -m nemo_mft bridge --config-file conf/bridge/llama32_1b_lora_mft.yaml

The recipe function (``--recipe MODULE:FUNCTION``, or ``recipe.function`` in the file) builds Bridge's
``ConfigContainer``; the YAML file and the ``key=value`` overrides (Hydra grammar: ``key=v``, ``+key=v``, ``~key``)
are applied with Bridge's override utilities; the ``mft:`` section (method, tau, temperature, impl, kd_ce_alpha,
inplace_grad, l2_init_weight) sets the objective (`nemo_mft.bridge.recipe`). Then `nemo_mft.bridge.apply_mft` and
Bridge's ``finetune(config, mft_forward_step(config, mft))``. ``--print-config`` prints the composed configuration and
the mft section instead of training.

Needs Megatron-Bridge 0.3.1 and TransformerEngine (the NGC NeMo container; see the Dockerfile). Errors follow
`nemo_mft.finetune.errors` (one line, exit status 2).
"""

from __future__ import annotations

from typing import Optional, Sequence

from nemo_mft.finetune.errors import UsageError, reported_errors

__all__ = ["bridge_main", "require_bridge"]


def require_bridge() -> None:
    """UsageError with `nemo_mft.bridge`'s own message unless it (Megatron-Bridge and the TransformerEngine that
    Bridge imports) can be imported."""
    try:
        import nemo_mft.bridge  # noqa: F401
    except ImportError as err:
        raise UsageError(str(err)) from err


def _parser():
    from nemo_mft.finetune.conversion import ArgumentParser

    parser = ArgumentParser(prog="nemo-mft bridge", description=__doc__.split("\n\n")[0],
                            epilog="Recipes of Megatron-Bridge 0.3.1, for example: "
                                   "megatron.bridge.recipes.llama.llama3:llama32_1b_sft_config, "
                                   "...llama3:llama32_1b_peft_config, ...llama3:llama31_8b_sft_config, "
                                   "megatron.bridge.recipes.qwen.qwen3:qwen3_8b_sft_config, "
                                   "megatron.bridge.recipes.qwen.qwen2:qwen25_7b_peft_config. "
                                   "Example files: conf/bridge/.")
    parser.add_argument("--recipe", metavar="MODULE:FUNCTION",
                        help="Bridge recipe function returning a ConfigContainer (default: recipe.function of the file)")
    parser.add_argument("--config-file", metavar="YAML",
                        help="YAML file: Bridge sections (train, model, optimizer, ...), mft:, and optionally recipe:")
    parser.add_argument("--print-config", action="store_true",
                        help="print the composed configuration and the mft section, do not train")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="Hydra-style overrides of Bridge's configuration and of mft.*, recipe.kwargs.*")
    return parser


def bridge_main(argv: Optional[Sequence[str]] = None) -> int:
    """``nemo-mft bridge ...``; returns 0, or exits with status 2 and one line on a user error."""
    with reported_errors("bridge"):
        return _bridge(argv)


def _bridge(argv: Optional[Sequence[str]]) -> int:
    args = _parser().parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o and not o.startswith("~")]
    if bad:
        raise UsageError(f"{bad[0]!r} is not an override (key=value, +key=value or ~key)")
    require_bridge()
    from nemo_mft.bridge.recipe import RecipeError, compose

    try:
        config, mft = compose(args.recipe, args.config_file, args.overrides)
    except RecipeError as err:
        raise UsageError(str(err)) from err
    if args.print_config:
        config.print_yaml()
        print(f"mft: {mft}")
        return 0
    from megatron.bridge.training.finetune import finetune

    from nemo_mft.bridge.recipe import prepare

    try:
        forward_step = prepare(config, mft)
    except (ValueError, TypeError) as err:  # a combination apply_mft does not support, a non-GPT model provider
        raise UsageError(str(err)) from err
    finetune(config, forward_step)
    return 0
