"""MPTConfig: the model's hyperparameters, read from our YAML or from an MPT `config.json`.

Field names follow MPT's `config.json` (llm-foundry's MPTConfig) with the nested `attn_config` and
`init_config` flattened, so a reader of either finds the same names. Values for MPT-7B are in
`configs/model/mpt-7b.yaml`; facts in ../shared/spec/mpt.md sections 1, 8 and 9.

    cfg = MPTConfig.from_name("mpt-7b")              # configs/model/mpt-7b.yaml
    cfg = MPTConfig.from_yaml("my-model.yaml")
    cfg = MPTConfig.from_mpt_json("mpt-7b/config.json")
    cfg.to_mpt_json()                                 # -> dict for an HF-format config.json

Unknown keys and invalid values raise ConfigError naming the key (and the file it came from).
"""
import dataclasses
import json
import math
import pathlib
from dataclasses import dataclass
from typing import Optional


import config as config_lib
from config import ConfigError, invalid

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs" / "model"


@dataclass(frozen=True)
class MPTConfig:
    # sizes
    d_model: int = 4096
    n_heads: int = 32
    n_layers: int = 32
    expansion_ratio: int = 4  # FFN hidden = expansion_ratio * d_model
    max_seq_len: int = 2048  # longest past + new key length the model accepts (MPT enforces it)
    vocab_size: int = 50432  # padded to a multiple of 128; the GPT-NeoX tokenizer uses 50,277 ids
    # layers
    no_bias: bool = True  # removes every bias, LayerNorm biases included
    norm_eps: float = 1e-5
    logit_scale: Optional[float] = None  # logits *= logit_scale when set
    # dropout (all 0 for MPT-7B and RecGPT)
    emb_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    # attention
    alibi: bool = True
    alibi_bias_max: float = 8.0
    clip_qkv: Optional[float] = None  # clamp the fused qkv projection to [-clip_qkv, clip_qkv]
    qk_ln: bool = False  # LayerNorm on q and k (over d_model) before splitting into heads
    softmax_scale: Optional[float] = None  # None -> 1/sqrt(head_dim)
    # "torch" (PyTorch reference: SDPA given a materialised bias, any device), "triton" (our flash kernel, CUDA) or
    # "flex" (torch's FlexAttention: compiled on CUDA; on the CPU eager and inference only)
    attn_impl: str = "torch"
    # initialisation for training from scratch (llm-foundry's generic_param_init_fn_)
    init_name: str = "kaiming_normal_"  # kaiming_normal_ | kaiming_uniform_ | normal_
    init_std: float = 0.02  # used by normal_
    init_gain: float = 0.0  # kaiming's `a`
    fan_mode: str = "fan_in"
    init_nonlinearity: str = "relu"
    init_div_is_residual: bool = True  # residual output projections /= sqrt(2 * n_layers)
    emb_init_std: Optional[float] = None
    emb_init_uniform_lim: Optional[float] = None
    # RecSysLLM's blank-infilling extension (docs/recsysllm.md): rows of a learned intra-position table added to the
    # token embeddings (entity-local positions), initialised to ZERO so that a converted MPT-7B computes exactly
    # its original logits until trained. 0 = no table (MPT-7B, RecGPT)
    intra_positions: int = 0

    def __post_init__(self):
        def check(key, ok, why):
            if not ok:
                raise invalid(key, getattr(self, key), why)

        for key in ("d_model", "n_heads", "n_layers", "expansion_ratio", "max_seq_len", "vocab_size"):
            check(key, isinstance(getattr(self, key), int) and getattr(self, key) > 0, "must be a positive int")
        check("d_model", self.d_model % self.n_heads == 0, f"must be divisible by n_heads={self.n_heads}")
        check("norm_eps", self.norm_eps > 0, "must be > 0")
        for key in ("emb_pdrop", "resid_pdrop", "attn_pdrop"):
            check(key, 0.0 <= getattr(self, key) < 1.0, "must be in [0, 1)")
        check("alibi", self.alibi is True,
              "only ALiBi MPT models are supported (MPT-7B and RecGPT use alibi: true)")
        check("alibi_bias_max", self.alibi_bias_max > 0, "must be > 0")
        check("clip_qkv", self.clip_qkv is None or self.clip_qkv > 0, "must be null or > 0")
        check("softmax_scale", self.softmax_scale is None or self.softmax_scale > 0, "must be null or > 0")
        check("logit_scale", self.logit_scale is None or isinstance(self.logit_scale, (int, float)),
              "must be null or a number")
        check("attn_impl", self.attn_impl in ("torch", "triton", "flex"), "must be 'torch', 'triton' or 'flex'")
        check("init_name", self.init_name in ("kaiming_normal_", "kaiming_uniform_", "normal_"),
              "must be kaiming_normal_, kaiming_uniform_ or normal_")
        check("fan_mode", self.fan_mode in ("fan_in", "fan_out"), "must be fan_in or fan_out")
        check("intra_positions", isinstance(self.intra_positions, int) and self.intra_positions >= 0,
              "must be an integer >= 0 (0: no intra-position table)")
        check("attn_pdrop", self.attn_pdrop == 0 or self.attn_impl == "torch",
              "attention dropout is only implemented for attn_impl 'torch'")

    # derived ---------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def scale(self) -> float:
        return self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def num_params(self) -> int:
        """Parameter count of the tied-embedding model (the embedding counted once)."""
        d, f = self.d_model, self.expansion_ratio * self.d_model
        bias = 0 if self.no_bias else 1
        attn = d * 3 * d + 3 * d * bias + d * d + d * bias + (2 * d * (1 + bias) if self.qk_ln else 0)
        ffn = d * f + f * bias + f * d + d * bias
        norms = 2 * d * (1 + bias)
        return self.vocab_size * d + self.n_layers * (attn + ffn + norms) + d * (1 + bias)

    # readers ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "<dict>") -> "MPTConfig":
        """Typed and checked by the project's config system (config/__init__.py): errors name key and source."""
        return config_lib.from_dict(cls, values, source)

    @classmethod
    def from_yaml(cls, path) -> "MPTConfig":
        return config_lib.load(cls, path)

    @classmethod
    def from_name(cls, name: str) -> "MPTConfig":
        path = CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"no model config named '{name}' in {CONFIG_DIR}; available: {names}")
        return cls.from_yaml(path)

    @classmethod
    def from_mpt_json(cls, path) -> "MPTConfig":
        """Read an MPT `config.json` (mosaicml's remote-code format or transformers' MptConfig)."""
        path = pathlib.Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
        return cls.from_dict(_flatten_mpt_json(raw, str(path)), source=str(path))

    def to_mpt_json(self) -> dict:
        """The config.json of an MPT checkpoint that transformers' MptForCausalLM and llm-foundry load."""
        if self.intra_positions:
            raise ConfigError(f"intra_positions = {self.intra_positions}: the blank-infilling extension has no "
                              f"counterpart in transformers' MPT (it runs the plain causal path only)")
        flat = dataclasses.asdict(self)
        out = {"architectures": ["MptForCausalLM"], "model_type": "mpt"}
        for ours, (section, theirs) in _MPT_JSON_KEYS.items():
            (out.setdefault(section, {}) if section else out)[theirs] = flat[ours]
        if self.attn_impl == "flex":  # ours only: mosaicml's remote-code MPTConfig raises "Unknown attn_impl" for
            out["attn_config"]["attn_impl"] = "torch"  # anything but torch/flash/triton (transformers ignores the key)
        for key in ("alibi_bias_max", "attn_pdrop", "clip_qkv"):  # transformers' MptAttentionConfig types them int
            value = out["attn_config"][key]
            if isinstance(value, float) and value.is_integer():
                out["attn_config"][key] = int(value)
        out.update(learned_pos_emb=False, embedding_fraction=1.0, norm_type="low_precision_layernorm",
                   tie_word_embeddings=True, use_cache=False)
        out["attn_config"].update(attn_type="multihead_attention", prefix_lm=False, attn_uses_sequence_id=False)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# our key -> (section of config.json or None for top level, MPT's key)
_MPT_JSON_KEYS = {
    "d_model": (None, "d_model"), "n_heads": (None, "n_heads"), "n_layers": (None, "n_layers"),
    "expansion_ratio": (None, "expansion_ratio"), "max_seq_len": (None, "max_seq_len"),
    "vocab_size": (None, "vocab_size"), "no_bias": (None, "no_bias"),
    "norm_eps": (None, "layer_norm_epsilon"), "logit_scale": (None, "logit_scale"),
    "emb_pdrop": (None, "emb_pdrop"), "resid_pdrop": (None, "resid_pdrop"),
    "attn_pdrop": ("attn_config", "attn_pdrop"), "alibi": ("attn_config", "alibi"),
    "alibi_bias_max": ("attn_config", "alibi_bias_max"), "clip_qkv": ("attn_config", "clip_qkv"),
    "qk_ln": ("attn_config", "qk_ln"), "softmax_scale": ("attn_config", "softmax_scale"),
    "attn_impl": ("attn_config", "attn_impl"),
    "init_name": ("init_config", "name"), "init_std": ("init_config", "init_std"),
    "init_gain": ("init_config", "init_gain"), "fan_mode": ("init_config", "fan_mode"),
    "init_nonlinearity": ("init_config", "init_nonlinearity"),
    "init_div_is_residual": ("init_config", "init_div_is_residual"),
    "emb_init_std": ("init_config", "emb_init_std"), "emb_init_uniform_lim": ("init_config", "emb_init_uniform_lim"),
}
# keys an MPT config.json may carry that do not change the computation (bookkeeping, HF generic fields)
_IGNORED_JSON_KEYS = {
    "_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "init_device", "verbose", "tokenizer_name", "model_type", "id2label", "label2id", "is_encoder_decoder",
    "output_attentions", "output_hidden_states", "return_dict", "problem_type", "chunk_size_feed_forward",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "fc_type", "use_pad_tok_in_ffn",
    "learned_pos_emb",  # ignored by MPT itself whenever alibi is on (spec/mpt.md section 1)
    "kv_n_heads",  # only read by grouped-query attention, which attn_type rules out
    "rope_theta", "rope_impl", "rope_dail_config", "rope_hf_config",  # only read when rope is on
}
# keys that must have a given value, because this codebase implements only that variant
_REQUIRED_JSON_VALUES = {
    "embedding_fraction": 1.0, "tie_word_embeddings": True,
    "attn_config.attn_type": "multihead_attention", "attn_config.prefix_lm": False,
    "attn_config.attn_uses_sequence_id": False, "attn_config.qk_gn": False,
    "attn_config.sliding_window_size": -1, "attn_config.rope": False,
    "ffn_config.ffn_type": "mptmlp",
    # low_precision_layernorm == layernorm outside autocast, and we train with bf16 parameters, not autocast
    "norm_type": ("layernorm", "low_precision_layernorm"),
}


def _flatten_mpt_json(raw: dict, source: str) -> dict:
    """config.json (nested attn_config/init_config) -> our flat keys, rejecting what we cannot honour."""
    theirs_to_ours = {(s, k): ours for ours, (s, k) in _MPT_JSON_KEYS.items()}
    flat = {}
    for section in (None, "attn_config", "init_config", "ffn_config"):
        block = raw if section is None else raw.get(section) or {}
        for key, value in block.items():
            if section is None and key in ("attn_config", "init_config", "ffn_config"):
                continue
            dotted = key if section is None else f"{section}.{key}"
            if dotted in _REQUIRED_JSON_VALUES:
                allowed = _REQUIRED_JSON_VALUES[dotted]
                allowed = allowed if isinstance(allowed, tuple) else (allowed,)
                if value not in allowed:
                    raise ConfigError(f"{source}: key '{dotted}' = {value!r} is not supported (only {allowed})")
                continue  # a supported value of a key that selects an implementation variant
            if (section, key) in theirs_to_ours:
                flat[theirs_to_ours[(section, key)]] = value
            elif key in _IGNORED_JSON_KEYS and section != "ffn_config":
                continue
            else:
                raise ConfigError(f"{source}: unknown key '{dotted}' in MPT config.json")
    if "init_config" in raw and raw["init_config"].get("name") not in (None, "normal_"):
        flat.pop("init_std", None)  # kaiming init ignores init_std; don't let a stray value mislead
    if flat.get("init_div_is_residual") not in (None, True, False):
        raise ConfigError(f"{source}: key 'init_config.init_div_is_residual' must be true or false")
    if "alibi_bias_max" in flat:
        flat["alibi_bias_max"] = float(flat["alibi_bias_max"])
    return flat
