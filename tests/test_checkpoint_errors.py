"""Bad configs and bad checkpoints fail with an error that names the culprit."""
import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from config import cli
from model.checkpoint import CheckpointError, load_model, save_model
from model.config import ConfigError, MPTConfig
from model.convert import convert_from_hf, main as convert_main
from model.mpt import build_model

TINY = MPTConfig.from_name("tiny")


def write_hf_dir(path: pathlib.Path, config: MPTConfig = TINY, state=None, fmt="safetensors"):
    """An HF-layout MPT directory holding `state` (HF names) in one file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_mpt_json()))
    if state is None:
        state = {"transformer." + k: v for k, v in build_model(config, seed=0).state_dict().items()}
    if fmt == "safetensors":
        save_file(state, path / "model.safetensors")
    else:
        torch.save(state, path / "pytorch_model.bin")
    return state


# --- configs ---------------------------------------------------------------------------------

def test_yaml_unknown_key_names_key_and_file(tmp_path):
    (tmp_path / "m.yaml").write_text("d_model: 64\nn_heads: 4\nn_layer: 2\n")
    with pytest.raises(ConfigError, match=r"m\.yaml.*'n_layer'"):
        MPTConfig.from_yaml(tmp_path / "m.yaml")


@pytest.mark.parametrize("key,value", [("d_model", 65), ("attn_impl", "flash"), ("resid_pdrop", 1.5),
                                       ("n_layers", 0), ("alibi", False), ("fan_mode", "fan_avg")])
def test_invalid_value_names_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        MPTConfig.from_dict({**TINY.to_dict(), key: value})


def test_unknown_model_name_lists_available():
    with pytest.raises(ConfigError, match=r"no model config named 'gpt2'.*mpt-7b"):
        MPTConfig.from_name("gpt2")


@pytest.mark.parametrize("edit,culprit", [
    (lambda c: c["attn_config"].update(rotary=True), "attn_config.rotary"),
    (lambda c: c.update(n_embd=64), "n_embd"),
    (lambda c: c["attn_config"].update(prefix_lm=True), "attn_config.prefix_lm"),
    (lambda c: c["attn_config"].update(attn_type="grouped_query_attention"), "attn_config.attn_type"),
    (lambda c: c.update(tie_word_embeddings=False), "tie_word_embeddings"),
    (lambda c: c.update(norm_type="rmsnorm"), "norm_type"),
])
def test_config_json_unknown_or_unsupported_key(tmp_path, edit, culprit):
    cfg = TINY.to_mpt_json()
    edit(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        MPTConfig.from_mpt_json(tmp_path / "config.json")


def test_config_json_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "d_model": 64,\n  "n_heads": 4,,\n}')
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON \(line 3\)"):
        MPTConfig.from_mpt_json(tmp_path / "config.json")


# --- HF checkpoints --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_missing_tensor_named(tmp_path, fmt):
    state = write_hf_dir(tmp_path / "hf", fmt=fmt)
    del state["transformer.blocks.1.ffn.up_proj.weight"]
    write_hf_dir(tmp_path / "hf", state=state, fmt=fmt)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['blocks\.1\.ffn\.up_proj\.weight'\]"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_unexpected_tensor_named(tmp_path):
    state = write_hf_dir(tmp_path / "hf")
    state["transformer.blocks.0.attn.rotary.weight"] = torch.zeros(3)
    write_hf_dir(tmp_path / "hf", state=state)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'blocks\.0\.attn\.rotary\.weight'"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_misshaped_tensor_named(tmp_path):
    state = write_hf_dir(tmp_path / "hf")
    state["transformer.blocks.0.attn.out_proj.weight"] = torch.zeros(64, 32)
    write_hf_dir(tmp_path / "hf", state=state)
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.attn\.out_proj\.weight' has shape \(64, 32\)"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_config_that_does_not_match_weights(tmp_path):
    write_hf_dir(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["n_layers"] = 3  # the weights have 2 blocks
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing tensor.*blocks\.2\."):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    cfg["n_layers"], cfg["vocab_size"] = 2, 1024
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'wte\.weight' has shape \(512, 64\).*\(1024, 64\)"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_truncated_safetensors_named(tmp_path):
    write_hf_dir(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_corrupt_bin_named(tmp_path):
    write_hf_dir(tmp_path / "hf", fmt="bin")
    f = tmp_path / "hf" / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: unreadable PyTorch weights file"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


class _NotATensor:  # unpickling this would run arbitrary code paths; weights_only must refuse it
    pass


def test_bin_with_arbitrary_pickle_refused(tmp_path):
    write_hf_dir(tmp_path / "hf", fmt="bin")
    torch.save({"transformer.wte.weight": _NotATensor()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: unreadable.*not tensor-only"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_index_naming_absent_shard(tmp_path):
    write_hf_dir(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "model-00001-of-00002.safetensors")
    weight_map = {"transformer.wte.weight": "model-00001-of-00002.safetensors",
                  "transformer.norm_f.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"names shard 'model-00002-of-00002\.safetensors'"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_tensor_in_two_shards_named(tmp_path):
    state = write_hf_dir(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    names = list(state)
    save_file(state, tmp_path / "hf" / "a.safetensors")
    save_file({names[0]: state[names[0]]}, tmp_path / "hf" / "b.safetensors")
    index = {n: "a.safetensors" for n in names}
    index[names[0]] = "b.safetensors"  # ...but a.safetensors holds it as well
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    with pytest.raises(CheckpointError, match=rf"a\.safetensors: holds tensor '{names[0]}', which the index "
                                              r"places in 'b\.safetensors'"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_tensor_mapped_twice_named(tmp_path):
    state = write_hf_dir(tmp_path / "hf")
    state["model.transformer.norm_f.weight"] = state["transformer.norm_f.weight"].clone()
    write_hf_dir(tmp_path / "hf", state=state)
    with pytest.raises(CheckpointError, match=r"maps to 'norm_f\.weight', which .* already provided"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_untied_lm_head_refused(tmp_path):
    state = write_hf_dir(tmp_path / "hf")
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1
    write_hf_dir(tmp_path / "hf", state=state)
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' differs from 'transformer\.wte\.weight'"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' differs"):  # read as it is: the same check
        load_model(tmp_path / "hf")
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()  # a tied copy is accepted and dropped
    write_hf_dir(tmp_path / "hf", state=state)
    convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_composer_prefix_accepted(tmp_path):
    state = write_hf_dir(tmp_path / "hf")
    write_hf_dir(tmp_path / "hf", state={"model." + k: v for k, v in state.items()})
    convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    assert torch.equal(load_model(tmp_path / "ours").wte.weight, state["transformer.wte.weight"])


def test_no_weights_at_all(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(TINY.to_mpt_json()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def test_cli_reports_error_and_exits_nonzero(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**TINY.to_mpt_json(), "n_embd": 3}))
    assert cli.run(convert_main, ["from-hf", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'n_embd'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ours").exists() and not list(tmp_path.glob("ours.*"))  # no half-written output, no lock


# --- our format ------------------------------------------------------------------------------

def saved_model(tmp_path, integrity=False):
    """A saved tiny model. Without integrity, its index is stripped of the shard and config hashes (as written before
    they existed), so that the checks behind them (names, shapes, readable files) are what a tampered shard meets."""
    model = build_model(TINY, seed=0)
    save_model(model.state_dict(), TINY, tmp_path / "ours")
    if not integrity:
        index_path = tmp_path / "ours" / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        index["metadata"] = {"total_size": index["metadata"]["total_size"]}
        index_path.write_text(json.dumps(index))
    return tmp_path / "ours", next((tmp_path / "ours").glob("model-*.safetensors"))


@pytest.mark.parametrize("verify", ["full", "fast"])
def test_integrity_catches_a_flipped_bit_a_truncation_and_an_edited_config(tmp_path, verify):
    ours, shard = saved_model(tmp_path, integrity=True)
    assert load_model(ours, verify=verify) is not None
    data = bytearray(shard.read_bytes())
    original = bytes(data)
    data[-7] ^= 0x10  # one bit of the last tensor's data: the file still parses, the weights would differ
    shard.write_bytes(bytes(data))
    if verify == "full":
        with pytest.raises(CheckpointError, match=rf"{shard.name}: its sha256 differs from .*index\.json"):
            load_model(ours, verify=verify)
    else:  # fast: sizes and headers only (documented), so a flipped bit in the data loads
        load_model(ours, verify=verify)
    shard.write_bytes(original[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: {len(original) - 100} bytes, .* says {len(original)}"):
        load_model(ours, verify=verify)
    shard.write_bytes(original)
    config = ours / "config.yaml"
    config.write_text(config.read_text().replace("n_heads: 4", "n_heads: 2"))
    with pytest.raises(CheckpointError, match=r"config\.yaml: changed since the weights were written"):
        load_model(ours, verify=verify)


def test_load_missing_and_misshaped_tensor(tmp_path):
    ours, shard = saved_model(tmp_path)
    tensors = load_file(shard)
    tensors["norm_f.weight"] = torch.ones(65)
    save_file(tensors, shard)
    with pytest.raises(CheckpointError, match=r"'norm_f\.weight' has shape \(65,\)"):
        load_model(ours)
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    del index["weight_map"]["norm_f.weight"]
    (ours / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['norm_f\.weight'\]"):
        load_model(ours)


def test_load_index_points_to_wrong_shard(tmp_path):
    ours, shard = saved_model(tmp_path)
    tensors = load_file(shard)
    del tensors["blocks.0.norm_2.weight"]
    save_file(tensors, shard)
    with pytest.raises(CheckpointError, match=r"lacks it|tensor 'blocks\.0\.norm_2\.weight'"):
        load_model(ours)


def test_load_truncated_shard_named(tmp_path):
    ours, shard = saved_model(tmp_path)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: unreadable safetensors file"):
        load_model(ours)


def test_save_model_rejects_wrong_state_dict():
    sd = build_model(TINY, seed=0).state_dict()
    sd["blocks.0.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'blocks\.0\.extra'"):
        save_model(sd, TINY, "/nonexistent")


def test_save_model_converts_one_shard_at_a_time(tmp_path, monkeypatch):
    """The export writes each shard as soon as it is converted (to the CPU and the export dtype): when a shard is
    written, no tensor of a later shard has been converted yet."""
    import gc
    import warnings

    import model.checkpoint as checkpoint

    state = build_model(TINY, seed=0).state_dict()  # fp32
    alive_at_write = []
    real = checkpoint.ShardWriter.write

    def write(self, tensors):
        gc.collect()
        with warnings.catch_warnings():  # (isinstance on every object touches deprecated torch attributes)
            warnings.simplefilter("ignore")
            alive = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16)
        alive_at_write.append((len(tensors), alive))
        return real(self, tensors)
    monkeypatch.setattr(checkpoint.ShardWriter, "write", write)
    save_model(state, TINY, tmp_path / "out", max_shard_bytes=40_000, dtype=torch.bfloat16)
    assert len(alive_at_write) > 3
    assert all(alive == n for n, alive in alive_at_write), alive_at_write  # only the shard being written
    loaded = load_model(tmp_path / "out")
    assert all(torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16)) for k, v in state.items())
