"""Structured schema of a finetuning recipe (the YAML files in `conf/`).

Section names follow Megatron-Bridge's ConfigContainer (model, train, optimizer, scheduler, dataset,
tokenizer, checkpoint, logger) plus `mft` and `evaluation`. Hydra merges a recipe onto these
dataclasses; `validate_config` checks that the merged config has exactly their keys (``+key=v`` /
``++key=v`` overrides can add others while composing; `nemo_mft.config.checks`) and turns it into these
objects, whose `__post_init__` checks values, before any process group or model exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional

from omegaconf import MISSING

from nemo_mft.data.samples import OVERFLOW_POLICIES
from nemo_mft.methods import Objective


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive(section: str, **values) -> None:
    for name, value in values.items():
        _require(isinstance(value, int) and value >= 1, f"{section}.{name} must be an integer >= 1, got {value!r}")


# The model of a run trained from scratch (no checkpoint.pretrained_checkpoint): what ModelSection's
# architecture keys left null become. With a Hugging Face base model they come from its config.json instead
# (`nemo_mft.config.base_model`).
SCRATCH_ARCHITECTURE = {
    "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "normalization": "LayerNorm",
    "activation": "gelu", "position_embedding_type": "rope", "rotary_base": 10000, "add_bias_linear": True,
    "add_qkv_bias": False, "qk_layernorm": False, "layernorm_epsilon": 1e-5,
    "share_embeddings_and_output_weights": False,
}
# Keys that may stay null in a complete model (null has a meaning: derived by megatron-core or the tokenizer).
OPTIONAL_ARCHITECTURE = ("num_query_groups", "ffn_hidden_size", "kv_channels", "rope_scaling_factor", "vocab_size")
ARCHITECTURE_KEYS = tuple(SCRATCH_ARCHITECTURE) + OPTIONAL_ARCHITECTURE
# model.transformer_impl: the values `nemo_mft.megatron.resolve_transformer_impl` takes (kept here so the
# schema imports no megatron-core; a test checks the two agree).
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")


@dataclass
class ModelSection:
    """A megatron-core GPT (TransformerEngine or local layer spec) and its parallel layout.

    The architecture keys (`ARCHITECTURE_KEYS`) default to null: with a Hugging Face base model
    (``checkpoint.pretrained_checkpoint``) they are read from its config.json, and a value set here that
    contradicts it is an error; otherwise null means `SCRATCH_ARCHITECTURE` (`with_scratch_defaults`).
    """

    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_query_groups: Optional[int] = None  # null: num_attention_heads (no GQA)
    ffn_hidden_size: Optional[int] = None  # null: 4 x hidden_size
    kv_channels: Optional[int] = None  # head dim; null: hidden_size / num_attention_heads
    normalization: Optional[str] = None  # LayerNorm or RMSNorm
    layernorm_epsilon: Optional[float] = None
    activation: Optional[str] = None  # gelu or swiglu
    position_embedding_type: Optional[str] = None  # rope or learned_absolute
    rotary_base: Optional[int] = None
    rope_scaling_factor: Optional[float] = None  # Llama 3.1 "llama3" rope scaling; null: none
    add_bias_linear: Optional[bool] = None
    add_qkv_bias: Optional[bool] = None  # q/k/v biases only (Qwen2)
    qk_layernorm: Optional[bool] = None  # RMSNorm on queries and keys (Qwen3)
    share_embeddings_and_output_weights: Optional[bool] = None
    # Embedding rows before padding; null: the tokenizer's vocabulary. Rows beyond the tokenizer's
    # vocabulary (e.g. Qwen's spare rows) and the padding for TP are never predicted by the loss.
    vocab_size: Optional[int] = None
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128
    params_dtype: str = "fp32"  # or bf16 (GPU)
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    # Layer modules (TRANSFORMER_IMPLS): auto = TransformerEngine's where TE and a GPU are present (the NGC
    # containers), else megatron-core's local ones; checkpoints load under either.
    transformer_impl: str = "auto"

    def __post_init__(self) -> None:
        """Checks every value that is set; relations between architecture keys once all are set."""
        _positive(
            "model", tensor_model_parallel_size=self.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.pipeline_model_parallel_size,
            make_vocab_size_divisible_by=self.make_vocab_size_divisible_by,
            **{k: getattr(self, k) for k in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                                             "ffn_hidden_size", "kv_channels", "vocab_size", "rotary_base")
               if getattr(self, k) is not None},
        )
        heads, tp = self.num_attention_heads, self.tensor_model_parallel_size
        if heads is not None and self.hidden_size is not None:
            _require(self.hidden_size % heads == 0 or self.kv_channels is not None,
                     f"model.hidden_size {self.hidden_size} must be divisible by num_attention_heads {heads} "
                     f"(or set model.kv_channels)")
        if heads is not None:
            _require(heads % tp == 0, f"model.num_attention_heads {heads} must be divisible by "
                                      f"tensor_model_parallel_size {tp}")
            groups = self.num_query_groups or heads
            _require(heads % groups == 0 and groups % tp == 0,
                     f"model.num_query_groups {groups} must divide num_attention_heads {heads} and be divisible by "
                     f"tensor_model_parallel_size {tp} (TP splits attention by whole key/value groups)")
        if self.num_layers is not None:
            _require(self.num_layers % self.pipeline_model_parallel_size == 0,
                     f"model.num_layers {self.num_layers} must be divisible by pipeline_model_parallel_size "
                     f"{self.pipeline_model_parallel_size}")
        _require(self.virtual_pipeline_model_parallel_size is None,
                 "model.virtual_pipeline_model_parallel_size is not supported (the teacher runs stage by "
                 "stage beside the student); leave it null")
        _require(self.context_parallel_size == 1, "model.context_parallel_size > 1 is not supported yet")
        for name, allowed in (("normalization", ("LayerNorm", "RMSNorm")), ("activation", ("gelu", "swiglu")),
                              ("position_embedding_type", ("rope", "learned_absolute")),
                              ("transformer_impl", TRANSFORMER_IMPLS)):
            value = getattr(self, name)
            _require(value is None or value in allowed,
                     f"model.{name} must be {' or '.join(allowed)}, got {value!r}")
        _require(self.layernorm_epsilon is None or self.layernorm_epsilon > 0,
                 f"model.layernorm_epsilon must be > 0, got {self.layernorm_epsilon!r}")
        _require(self.rope_scaling_factor is None or self.rope_scaling_factor > 0,
                 f"model.rope_scaling_factor must be null or > 0, got {self.rope_scaling_factor!r}")
        _require(self.params_dtype in ("fp32", "bf16"), f"model.params_dtype must be fp32 or bf16, got {self.params_dtype!r}")
        _require(not self.sequence_parallel or self.tensor_model_parallel_size > 1,
                 "model.sequence_parallel needs tensor_model_parallel_size > 1")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"model.{name} must be in [0, 1), got {value!r}")

    def with_scratch_defaults(self) -> "ModelSection":
        """This section with every unset architecture key at its `SCRATCH_ARCHITECTURE` value (validated)."""
        unset = {k: v for k, v in SCRATCH_ARCHITECTURE.items() if getattr(self, k) is None}
        return replace(self, **unset) if unset else self

    @property
    def is_complete(self) -> bool:
        return all(getattr(self, k) is not None for k in SCRATCH_ARCHITECTURE)


@dataclass
class TrainSection:
    train_iters: int = 100
    global_batch_size: int = 8
    micro_batch_size: int = 2
    seed: int = 1234
    # Stop after this iteration (saving a checkpoint first when checkpoint.save is set), like Megatron's
    # --exit-interval: splits a long run into jobs; the next job resumes with checkpoint.load.
    exit_interval: Optional[int] = None
    # Stop (without saving) when an iteration's mean student cross-entropy exceeds this many times the
    # first iteration's; null disables it. A non-finite loss or gradient norm always stops the run.
    divergence_factor: Optional[float] = 10.0

    def __post_init__(self) -> None:
        _positive("train", train_iters=self.train_iters, global_batch_size=self.global_batch_size,
                  micro_batch_size=self.micro_batch_size)
        _require(self.exit_interval is None or self.exit_interval >= 1,
                 f"train.exit_interval must be null or >= 1, got {self.exit_interval!r}")
        _require(self.divergence_factor is None or self.divergence_factor > 1.0,
                 f"train.divergence_factor must be null or > 1, got {self.divergence_factor!r}")
        _require(self.global_batch_size % self.micro_batch_size == 0,
                 f"train.global_batch_size {self.global_batch_size} must be a multiple of micro_batch_size "
                 f"{self.micro_batch_size}")


@dataclass
class OptimizerSection:
    optimizer: str = "adam"
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0

    def __post_init__(self) -> None:
        _require(self.optimizer in ("adam", "sgd"), f"optimizer.optimizer must be adam or sgd, got {self.optimizer!r}")
        _require(self.lr > 0, f"optimizer.lr must be > 0, got {self.lr!r}")
        _require(0 <= self.min_lr <= self.lr, f"optimizer.min_lr must be in [0, lr], got {self.min_lr!r}")
        _require(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {self.weight_decay!r}")
        _require(self.clip_grad >= 0, f"optimizer.clip_grad must be >= 0 (0 disables), got {self.clip_grad!r}")


@dataclass
class SchedulerSection:
    lr_warmup_iters: int = 0
    lr_decay_style: str = "cosine"
    lr_decay_iters: Optional[int] = None  # null: train.train_iters

    def __post_init__(self) -> None:
        _require(self.lr_decay_iters is None or self.lr_decay_iters >= 1,
                 f"scheduler.lr_decay_iters must be null or >= 1, got {self.lr_decay_iters!r}")
        _require(self.lr_decay_style in ("constant", "linear", "cosine"),
                 f"scheduler.lr_decay_style must be constant, linear or cosine, got {self.lr_decay_style!r}")
        _require(self.lr_warmup_iters >= 0, f"scheduler.lr_warmup_iters must be >= 0, got {self.lr_warmup_iters!r}")




@dataclass
class DatasetSection:
    dataset_root: str = MISSING  # directory with training.jsonl and validation.jsonl
    seq_length: int = 128
    max_samples: Optional[int] = None  # the domain budget, e.g. 500
    # Replay baseline: general-domain rows (any supported jsonl format; {"text"} = loss on every token)
    # mixed into the training set so that they are replay_fraction of it: round(n f / (1 - f)) replay rows
    # beside n domain rows, a seeded subset of the file.
    replay_data: Optional[str] = None
    replay_fraction: float = 0.0
    # Rows longer than seq_length + 1 tokens (training, replay and validation files): truncate (keep the
    # start, counted), drop (leave them out, counted) or error (refuse the dataset, naming the first line).
    on_overflow: str = "truncate"
    # A training or replay file in which more than this share of the kept rows has no answer token with
    # loss (prompt filling the window, empty answer) is refused; 1.0 never refuses.
    max_no_loss_fraction: float = 0.1

    def __post_init__(self) -> None:
        _positive("dataset", seq_length=self.seq_length)
        _require(self.on_overflow in OVERFLOW_POLICIES,
                 f"dataset.on_overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {self.on_overflow!r}")
        fraction = self.max_no_loss_fraction
        _require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 <= fraction <= 1.0,
                 f"dataset.max_no_loss_fraction must be a number in [0, 1], got {fraction!r}")
        _require(self.max_samples is None or (isinstance(self.max_samples, int) and self.max_samples >= 1),
                 f"dataset.max_samples must be null or an integer >= 1, got {self.max_samples!r}")
        _require(0.0 <= self.replay_fraction < 1.0,
                 f"dataset.replay_fraction must be in [0, 1), got {self.replay_fraction!r}")
        _require(self.replay_fraction == 0.0 or bool(self.replay_data),
                 "dataset.replay_fraction > 0 needs dataset.replay_data (a jsonl of general-domain rows)")


@dataclass
class TokenizerSection:
    # byte | huggingface; null: the base model's own tokenizer when checkpoint.pretrained_checkpoint is a
    # Hugging Face model (or a checkpoint of one), else byte.
    type: Optional[str] = None
    path: Optional[str] = None  # huggingface: tokenizer.json or its directory; null: the base model's directory

    def __post_init__(self) -> None:
        _require(self.type in (None, "byte", "huggingface"),
                 f"tokenizer.type must be byte or huggingface (or null), got {self.type!r}")
        _require(self.type != "byte" or not self.path, f"tokenizer.type=byte takes no tokenizer.path, got {self.path!r}")


@dataclass
class CheckpointSection:
    pretrained_checkpoint: Optional[str] = None  # weights-only init; null = seeded random init (from scratch)
    save: Optional[str] = None
    save_interval: Optional[int] = None  # null: only at the end
    load: Optional[str] = None  # full resume: model, optimizer, scheduler, RNG, data position
    keep_last: int = 2
    verify_checksums: bool = True  # check every checkpoint file's sha256 against its manifest at load
    # Recipe keys a resume may change although they change the training math (e.g. [optimizer.lr]); a
    # section name allows all its keys. Every other change of the math is refused on resume.
    resume_allow_changes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.save_interval is None or self.save_interval >= 1,
                 f"checkpoint.save_interval must be null or >= 1, got {self.save_interval!r}")
        _positive("checkpoint", keep_last=self.keep_last)


@dataclass
class LoggerSection:
    log_dir: str = "runs/mft"
    log_interval: int = 1
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _positive("logger", log_interval=self.log_interval)


@dataclass
class EvaluationSection:
    general_data: Optional[str] = None  # jsonl of {"text"} lines from the general domain
    eval_interval: Optional[int] = None  # null: only at the start and the end
    max_eval_windows: int = 64  # per evaluation set, of seq_length tokens each

    def __post_init__(self) -> None:
        _require(self.eval_interval is None or self.eval_interval >= 1,
                 f"evaluation.eval_interval must be null or >= 1, got {self.eval_interval!r}")
        _positive("evaluation", max_eval_windows=self.max_eval_windows)


@dataclass
class MFTSection:
    """The training objective (`nemo_mft.methods.Objective`, validated there) and the L2-to-init baseline."""

    method: str = "mft"  # one of nemo_mft.methods.METHODS
    tau: float = 0.25
    temperature: float = 1.0
    impl: str = "auto"
    kd_ce_alpha: float = 0.5  # method kd_ce: weight of the cross-entropy term
    # The student logits' buffer receives their gradient during the loss (one [B, S, V_local] tensor less
    # per micro-batch); false only for code that reads the logits after the loss.
    inplace_grad: bool = True
    # L2-to-initial-weights baseline (any method): adds l2_init_weight / 2 * ||theta - theta_0||^2 to the
    # per-token mean loss, theta_0 = the initial (pretrained) weights.
    l2_init_weight: float = 0.0

    def __post_init__(self) -> None:
        try:
            self.objective
        except ValueError as err:
            raise ValueError(f"mft.{err}") from None
        _require(self.l2_init_weight >= 0.0, f"mft.l2_init_weight must be >= 0, got {self.l2_init_weight!r}")

    @property
    def objective(self) -> Objective:
        """The objective these values describe (what `nemo_mft.megatron` takes)."""
        return Objective(method=self.method, tau=self.tau, temperature=self.temperature, kd_ce_alpha=self.kd_ce_alpha,
                         impl=self.impl, inplace_grad=self.inplace_grad)

    @property
    def label(self) -> str:
        """Short description of the training objective, e.g. ``mft tau=0.25`` or ``ft + l2_init=0.1``."""
        l2 = f" + l2_init={self.l2_init_weight:g}" if self.l2_init_weight > 0 else ""
        return f"{self.objective.label}{l2}"


@dataclass
class PeftSection:
    """Parameter-efficient finetuning. ``method: lora`` trains only LoRA adapters on ``target_modules`` of
    every layer (A random, B zero: step 0 is the base model); the base weights stay frozen and the MFT
    teacher is the base model itself with the adapters off (no second copy). Checkpoints hold the adapters."""

    method: str = "none"  # none | lora
    dim: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # Megatron-Bridge's names: linear_qkv (q/k/v_proj), linear_proj (o_proj), linear_fc1 (gate/up_proj),
    # linear_fc2 (down_proj).
    target_modules: List[str] = field(default_factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1",
                                                               "linear_fc2"])

    def __post_init__(self) -> None:
        _require(self.method in ("none", "lora"), f"peft.method must be none or lora, got {self.method!r}")
        if self.method == "lora":
            try:
                self.lora
            except ValueError as err:
                raise ValueError(f"peft.{err}") from None

    @property
    def lora(self):
        """The `nemo_mft.peft.LoRAConfig` of this section, None for ``method: none``."""
        if self.method != "lora":
            return None
        from nemo_mft.peft import LoRAConfig

        return LoRAConfig(dim=self.dim, alpha=self.alpha, dropout=self.dropout,
                          target_modules=tuple(self.target_modules))


@dataclass
class FinetuneConfig:
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logger: LoggerSection = field(default_factory=LoggerSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    mft: MFTSection = field(default_factory=MFTSection)
    peft: PeftSection = field(default_factory=PeftSection)

    def __post_init__(self) -> None:
        if self.checkpoint.pretrained_checkpoint is None:  # from scratch: nothing to read the model from
            self.model = self.model.with_scratch_defaults()
            if self.tokenizer.type is None:
                _require(not self.tokenizer.path, "tokenizer.path is set but tokenizer.type is null: set "
                                                  "tokenizer.type=huggingface")
                self.tokenizer = TokenizerSection(type="byte")
            _require(self.tokenizer.type != "huggingface" or self.tokenizer.path,
                     "tokenizer.path is required for tokenizer.type=huggingface (or start from a Hugging Face model "
                     "with checkpoint.pretrained_checkpoint, whose tokenizer is then used)")
        if self.peft.method != "none":
            _require(self.checkpoint.pretrained_checkpoint is not None,
                     f"peft.method={self.peft.method} adapts a base model: set checkpoint.pretrained_checkpoint")
            _require(self.mft.l2_init_weight == 0.0, "mft.l2_init_weight with peft.method=lora is not supported "
                                                     "(the adapters start at zero change; use the adapters' rank)")
            _require(not self.model.sequence_parallel, "peft.method=lora with model.sequence_parallel is not "
                                                       "supported yet")
        decay_iters = self.scheduler.lr_decay_iters or self.train.train_iters
        _require(self.scheduler.lr_warmup_iters <= self.train.train_iters,
                 "scheduler.lr_warmup_iters must not exceed train.train_iters")
        _require(self.scheduler.lr_warmup_iters < decay_iters,
                 f"scheduler.lr_warmup_iters {self.scheduler.lr_warmup_iters} must be smaller than the decay "
                 f"length (scheduler.lr_decay_iters, default train.train_iters) {decay_iters}")

    def check_world(self, world_size: int) -> int:
        """Data-parallel size for ``world_size`` processes; raises on an impossible layout."""
        model_parallel = self.model.tensor_model_parallel_size * self.model.pipeline_model_parallel_size
        _require(world_size % model_parallel == 0,
                 f"{world_size} processes cannot be split into tensor_model_parallel_size "
                 f"{self.model.tensor_model_parallel_size} x pipeline_model_parallel_size "
                 f"{self.model.pipeline_model_parallel_size}")
        dp_size = world_size // model_parallel
        per_step = self.train.micro_batch_size * dp_size
        _require(self.train.global_batch_size % per_step == 0,
                 f"train.global_batch_size {self.train.global_batch_size} must be a multiple of "
                 f"micro_batch_size x data-parallel size = {self.train.micro_batch_size} x {dp_size}")
        return dp_size
