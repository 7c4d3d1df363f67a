"""The run config of train.py and finetune.py: one dataclass per section (the schema, with every default), read by
the project's one config system (config/__init__.py: YAML file + `--section.key=value` overrides, CLI > file >
the command's base > these defaults, errors naming the key and its file).

    cfg = load_config("configs/train/tiny-pretrain.yaml", ["--optim.lr=1e-3", "--train.max_steps=20"])
    cfg.optim.lr, config.dump(cfg)

The resolved config is printed at start and saved in every checkpoint; a resume compares it with the saved one
(training/loop.py): only the keys in SAFE_TO_CHANGE may differ unless `checkpoint.allow_changes` names the others.
"""
from dataclasses import dataclass, field
from typing import Literal, Optional

import config as config_lib
from config import invalid
from model.lora import TARGETS as LORA_TARGETS
from training.schedule import SCHEDULES


@dataclass
class RunSection:
    name: str = "run"
    out_dir: str = "out/run"  # metrics.jsonl, config.yaml, checkpoints/, model/ (the exported final model)
    seed: int = 1337  # weight init (shared by all ranks), data order; stochastic ops use seed + rank
    deterministic: bool = False  # torch.use_deterministic_algorithms + no TF32


@dataclass
class ModelSection:
    name: Optional[str] = None  # configs/model/<name>.yaml; with init_from it must describe the same architecture
    config: Optional[str] = None  # or a path to a model YAML (instead of name)
    init_from: Optional[str] = None  # a checkpoint dir, ours or a HF MPT dir (mosaicml/mpt-7b); null = scratch
    overrides: dict = field(default_factory=dict)  # model keys that do not change the weights, e.g. {attn_impl: triton}
    verify: Literal["full", "fast"] = "full"  # init_from integrity: full = sha256 of each shard; fast = sizes, headers

    def __post_init__(self):
        if self.name is not None and self.config is not None:
            raise invalid("name", self.name, "set model.name or model.config, not both")


@dataclass
class DataSection:
    path: Optional[str] = None  # a data build (folder with meta.json): packed rows / instruction pairs
    seq_len: Optional[int] = None  # train.py: packed row length (may cut rows); finetune.py: max length
    shuffle: bool = True
    eos_id: Optional[int] = None  # finetune.py: EOS/pad id; default: meta.json instructions.eos_id
    pad_to: Literal["max_seq_len", "longest"] = "max_seq_len"  # finetune.py; max_seq_len = llm-foundry's
    # finetune.py: each step's examples cut into micro-batches longest first (with pad_to=longest, less padding);
    # the same examples and gradient per step, summed in another order
    micro_batches_by_length: bool = False
    # finetune.py: the loss also on the prompt's entities that fill these template slots (a P5 build names each
    # entity's slot: data/prepare/p5_tasks.py "entity_slots"), e.g. [purchase_history], the history's titles, on which
    # causal pre-training puts its loss; [] = on the response and EOS only (llm-foundry's format)
    prompt_loss_slots: list[str] = field(default_factory=list)
    synthetic: bool = False  # random tokens instead of data (benchmark mode); no data.path needed


@dataclass
class InfillSection:
    """The objective of train.py and finetune.py: causal (RecGPT) or RecSysLLM's blank infilling
    (training/infilling.py, docs/recsysllm.md; finetune.py: each pair as [gMASK] generation, the keys below but
    intra and position_scheme unused). Infilling needs a model with an intra table (model.overrides:
    {intra_positions: N})."""
    objective: Literal["causal", "infill"] = "causal"
    mix: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.2])  # [MASK] spans, [sMASK] lines, [gMASK] suffix
    ratio: float = 0.15  # share of units masked in span and line modes
    poisson_lambda: float = 3.0  # GLM's mean span length, in units
    position_scheme: Literal["continuation", "glm"] = "continuation"
    # ablation switches (each RecSysLLM ingredient off)
    entity_masking: bool = True  # false: GLM's token spans
    chronological: bool = True  # false: Part B spans shuffled (GLM's default)
    intra: bool = True  # false: no intra ids (1D positions only)
    behaviour_sampling: bool = False  # RecSysLLM's long/medium/short-term sampling of a row's items
    shares: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.6])
    windows: list[float] = field(default_factory=lambda: [0.5, 0.3])

    def __post_init__(self):
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise invalid("mix", self.mix, "must be three non-negative weights ([MASK], [sMASK], [gMASK])")
        if len(self.shares) != 3 or len(self.windows) != 2 or sum(self.windows) >= 1:
            raise invalid("windows", self.windows, "shares: 3 numbers; windows: 2 shares summing below 1")


@dataclass
class LoraSection:
    """LoRA fine-tuning (model/lora.py): adapters on each block's target Linears, everything else frozen (kept in
    bf16 with parallel.mixed_precision bf16). The export writes the merged model and the adapter in PEFT's format."""
    enabled: bool = False
    rank: int = 8  # r: A is (r, in), B is (out, r)
    alpha: float = 16.0  # the update is scaled by alpha / rank (litgpt's default 16 for r 8; PEFT's is 8)
    dropout: float = 0.05  # on the adapters' input only
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # RecSysLLM's four; any subset

    def __post_init__(self):
        if self.rank < 1:
            raise invalid("rank", self.rank, "must be >= 1")
        if not self.alpha > 0:
            raise invalid("alpha", self.alpha, "must be > 0")
        if not 0 <= self.dropout < 1:
            raise invalid("dropout", self.dropout, "must be in [0, 1)")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise invalid("targets", self.targets, f"must be distinct names among {list(LORA_TARGETS)}"
                          + (f" ({unknown[0]!r} is not a Linear of our MPT)" if unknown else ""))


@dataclass
class OptimSection:
    lr: float = 2.5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    decay_mode: Literal["lr", "schedule"] = "lr"  # "lr" (paper: decay lr*wd) | "schedule" (llm-foundry)
    foreach: bool = True
    grad_clip: float = 1.0  # global L2 norm; 0 disables

    def __post_init__(self):
        if len(self.betas) != 2:
            raise invalid("betas", self.betas, "must be two numbers [beta1, beta2]")


@dataclass
class ScheduleSection:
    name: str = "cosine_with_warmup"  # training/schedule.py SCHEDULES
    t_warmup: int = 2000  # steps
    alpha_f: float = 0.1

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise invalid("name", self.name, f"must be one of {list(SCHEDULES)}")


@dataclass
class TrainSection:
    global_batch_size: int = 128  # sequences per optimizer step, over all ranks
    micro_batch_size: int = 1  # sequences per forward/backward per rank
    max_steps: Optional[int] = None  # total optimizer steps; null = epochs * steps_per_epoch
    epochs: int = 1
    stop_after: Optional[int] = None  # leave the loop after this step (as if killed); the schedule uses max_steps
    compile: bool = False


@dataclass
class ParallelSection:
    mixed_precision: Literal["bf16", "fp32"] = "bf16"  # bf16: bf16 compute, fp32 sharded master + fp32 reduce
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    backend: Optional[str] = None  # default nccl on CUDA, gloo on CPU


@dataclass
class EvalSection:
    interval: int = 0  # steps between validation losses (and at the end); 0 = never
    batches: int = 8  # global batches of the build's validation split per evaluation; 0 = the whole split
    export_best: bool = True  # export each new best (lowest validation loss) model to out_dir/model-best


@dataclass
class CheckpointSection:
    interval: int = 1000  # steps; 0 = only at the end
    keep_last: int = 2
    resume: Optional[str] = "auto"  # "auto" (newest complete in out_dir/checkpoints) | a step-N dir | null
    allow_changes: list[str] = field(default_factory=list)  # keys a resume may change besides SAFE_TO_CHANGE; "*" all
    reexport: bool = False  # a finished run: export the final model again instead of stopping with an error
    export_final: bool = True  # write out_dir/model in our safetensors format at the end
    export_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


@dataclass
class LogSection:
    interval: int = 10  # steps between console lines
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "recgpt"
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU when the device is not in the table


@dataclass
class BenchmarkSection:
    enabled: bool = False  # time steps (synthetic data), print tokens/s, MFU, memory; no checkpoints
    warmup_steps: int = 3
    steps: int = 10


@dataclass
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    infill: InfillSection = field(default_factory=InfillSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    benchmark: BenchmarkSection = field(default_factory=BenchmarkSection)

    def __post_init__(self):
        for key, ok, why in RANGES:
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            if value is not None and not ok(value):
                raise invalid(key, value, why)


# value ranges (null stays allowed where the key is optional)
RANGES = [
    *[(f"train.{k}", lambda v: v >= 1, "must be >= 1") for k in ("global_batch_size", "micro_batch_size", "epochs",
                                                                   "max_steps", "stop_after")],
    *[(k, lambda v: v >= 0, "must be >= 0") for k in ("eval.interval", "eval.batches", "checkpoint.interval",
                                                       "optim.weight_decay", "optim.grad_clip", "schedule.t_warmup",
                                                       "benchmark.warmup_steps", "data.eos_id")],
    *[(k, lambda v: v >= 1, "must be >= 1") for k in ("data.seq_len", "checkpoint.keep_last", "log.interval",
                                                       "benchmark.steps")],
    ("optim.lr", lambda v: v > 0, "must be > 0"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "must be in [0, 1)"),
    ("schedule.alpha_f", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("log.peak_flops", lambda v: v > 0, "must be > 0"),
]


# Keys a resume may change without `checkpoint.allow_changes`: they change how a run is watched, saved or laid out
# on the devices, never the numbers it computes (activation checkpointing preserves the RNG: training/distributed.py).
SAFE_TO_CHANGE = ("run.name", "run.out_dir", "log.", "eval.interval", "eval.batches", "eval.export_best",
                  "checkpoint.interval", "checkpoint.keep_last", "checkpoint.resume", "checkpoint.allow_changes",
                  "checkpoint.reexport", "train.stop_after", "train.compile", "parallel.activation_checkpointing",
                  "parallel.reshard_after_forward", "parallel.backend",
                  "data.micro_batches_by_length")  # the same examples and gradient per step (docs/training.md)


def unsafe_changes(saved: dict, now: dict, allowed=()) -> list[str]:
    """"key: saved -> now" for every difference between two resolved configs that a resume must not pass over."""
    out = []
    for key, a, b in config_lib.differences(saved, now):
        if "*" in allowed or any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_TO_CHANGE):
            continue
        if key in allowed or any(key.startswith(a_ + ".") for a_ in allowed):
            continue
        out.append(f"{key}: {a!r} -> {b!r}")
    return out


def load_config(path=None, argv=(), base: dict = None) -> TrainConfig:
    """TrainConfig defaults <- `base` (an entry point's own defaults) <- YAML file <- CLI overrides."""
    return config_lib.load(TrainConfig, path, argv, base)
