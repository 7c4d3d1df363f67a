"""The model card (README.md) written beside an exported model: what it is, where it came from, how to use it.

The facts are kept in the card's YAML front matter (the metadata block Hugging Face's hub reads: `license`,
`base_model`, `tags`, `library_name`) plus a `recgpt` block with ours (data build, training, metrics, config),
so that a later export (`python -m model.convert to-hf`) carries them on; the text below it is written from
them. Nothing here is required to load a model.
"""
import pathlib

import yaml

from model.config import MPTConfig

CARD_NAME = "README.md"
# the published bases and their licences (spec/mpt.md, spec/recgpt.md; MPT-7B's model card states Apache 2.0)
LICENSES = {"mosaicml/mpt-7b": "apache-2.0", "vinai/recgpt-7b": "cc-by-nc-4.0",
            "vinai/recgpt-7b-instruct": "cc-by-nc-4.0"}


def read_card(model_dir) -> dict:
    """The facts of a model's card (its front matter's `recgpt` block and `base_model`; not the config, which
    the model's own config file holds), {} without a card."""
    path = pathlib.Path(model_dir) / CARD_NAME
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return {}
    meta = yaml.safe_load(text[4: text.index("\n---\n", 4)]) or {}
    facts = dict(meta.get("recgpt") or {})
    facts.pop("config", None)
    if meta.get("base_model"):
        facts.setdefault("base_model", meta["base_model"])
    return facts


def _license(base_model) -> str:
    for name, lic in LICENSES.items():
        if base_model and name in str(base_model).lower():
            return lic
    return "other"


def write_card(out_dir, config: MPTConfig, base_model=None, data=None, training=None, metrics=None,
               converted_from=None, dtype=None, layout="ours", limitations=None) -> pathlib.Path:
    """README.md in `out_dir` from what is known of the model; unknown facts are said to be unknown."""
    out_dir = pathlib.Path(out_dir)
    facts = {k: v for k, v in dict(base_model=base_model, data=data, training=training, metrics=metrics,
                                   converted_from=converted_from, dtype=dtype, limitations=limitations).items() if v}
    facts["config"] = {k: v for k, v in config.to_dict().items() if v is not None}
    front = {"license": _license(base_model), "tags": ["mpt", "recommendation", "recgpt"], "recgpt": facts}
    if base_model:
        front["base_model"] = str(base_model)
    if layout == "hf":
        front["library_name"] = "transformers"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# MPT decoder, {config.num_params() / 1e6:,.1f}M parameters",
             "",
             f"{config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, vocabulary "
             f"{config.vocab_size:,}, ALiBi positions up to {config.max_seq_len} tokens; "
             + ("Hugging Face MPT layout (`transformers.MptForCausalLM`)" if layout == "hf" else
                "this project's checkpoint format (`model.checkpoint.load_model`)")
             + (f", weights in {dtype}" if dtype else "") + ".",
             "",
             "## Where it comes from",
             f"- Base model: {base_model or 'none recorded (trained from scratch, or unknown)'}.",
             f"- Data: {_describe(data) or 'not recorded'}.",
             f"- Training: {_describe(training) or 'not recorded'}.",
             f"- Metrics: {_describe(metrics) or 'none recorded with the model (see the run that made it)'}."]
    if converted_from:
        lines.append(f"- Converted from `{converted_from}` with `python -m model.convert`.")
    if limitations:
        lines += ["", "## What this export cannot do", limitations]
    lines += ["",
              "## Intended use",
              "Research on LLM-based recommendation (RecGPT, Ngo & Nguyen, ACL 2024; RecSysLLM, Chu et al. 2023):",
              "next-item and rating prompts in the templates of this project's data build. Not evaluated for",
              "any use outside that setting; recommendations can repeat the biases of their training data.",
              "",
              "## License",
              f"Front matter: `{front['license']}`. A model derived from published weights keeps their licence",
              "(MPT-7B: Apache 2.0; RecGPT-7B and RecGPT-7B-Instruct: CC-BY-NC-4.0), and the terms of the datasets",
              "it was trained on apply as well (e.g. Amazon reviews and MovieLens are for research use).",
              "",
              "## How to load",
              "```python"]
    if layout == "hf":
        lines += ["from transformers import MptForCausalLM",
                  f"model = MptForCausalLM.from_pretrained({str(out_dir)!r})"]
    else:
        lines += ["from model.checkpoint import load_model", f"model = load_model({str(out_dir)!r})"]
    lines += ["```", ""]
    path = out_dir / CARD_NAME
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _describe(d) -> str:
    if not d:
        return ""
    if not isinstance(d, dict):
        return str(d)
    return "; ".join(f"{k} {v}" for k, v in d.items())
