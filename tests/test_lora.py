"""LoRA (model/lora.py) and its training path: B = 0 is the base model exactly, gradients reach only the adapters (also
under FSDP2 with activation checkpointing and adapter dropout), merged == unmerged, the export loads with `peft` onto
transformers' MptForCausalLM of the same base and gives our merged model's logits (fp32, 1e-5), train.py and
finetune.py learn with it, a kill-and-resume continues with the same losses, 2 gloo ranks == 1, and a bad adapter or
option is an error naming its culprit.

peft and transformers are test references only (the library never imports them).
"""
import dataclasses
import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh

import finetune
import train
from config import ConfigError
from model.checkpoint import load_model
from model.config import MPTConfig
from model.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, LoRALinear, adapter_parameter_count,
                        adapter_tensors, add_lora, load_adapter, merge_lora, merge_state_dict, save_adapter,
                        trainable_parameters)
from model.mpt import build_model
from test_hf_directories import tiny_hf
from test_training import one_thread, read_metrics, world_of_one  # noqa: F401  (fixtures)
from test_training_dist import assert_same, launch, losses
from training import distributed as dist_utils
from training.config import load_config
from training.loop import loss_sum_and_count
from training.testing import write_tiny_build

transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")
peft = pytest.importorskip("peft", reason="peft is the reference for the adapter format")

TINY = "configs/train/tiny-pretrain.yaml"
TINY_FT = "configs/train/tiny-finetune.yaml"
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32 parity


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_build(tmp_path_factory.mktemp("data"), seq_len=32, n_docs=120, n_pairs=16)


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A random transformers MptForCausalLM in the `tiny` shape, saved as save_pretrained does: the base model that
    our runs start from (model.init_from reads it as it is) and that peft puts the exported adapter on."""
    path = tmp_path_factory.mktemp("hf") / "base"
    tiny_hf(max_seq_len=128).save_pretrained(path)
    return path


def ids(batch=2, length=12, seed=1):
    return torch.randint(1, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomise_b(model, seed=0):
    """Non-zero B matrices (as after training), so the adapters change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.copy_(0.05 * torch.randn(m.lora_B.weight.shape, generator=g))
    return model


# --------------------------------------------------------------------------------------------------- the module


@pytest.mark.parametrize("no_bias", [True, False])
def test_zero_b_gives_the_base_models_logits_exactly(no_bias):
    config = dataclasses.replace(MPTConfig.from_name("tiny"), no_bias=no_bias)
    model = build_model(config, seed=0)
    base_keys = list(model.state_dict())
    with torch.no_grad():
        base = model(ids())
    add_lora(model, rank=4, alpha=8, dropout=0.1)
    assert [k for k in model.state_dict() if "lora_" not in k] == base_keys  # base checkpoints still load
    assert all(m.lora_A.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))  # A random
    for mode in (model.eval, model.train):  # adapter dropout on: still B = 0
        mode()
        with torch.no_grad():
            assert torch.equal(model(ids()), base)


def test_gradients_reach_only_the_adapters():
    model = randomise_b(add_lora(build_model(MPTConfig.from_name("tiny"), seed=0), rank=4, alpha=8))
    batch = {"input_ids": ids(), "labels": ids()}
    loss_sum, count = loss_sum_and_count(model, batch, "cpu")
    (loss_sum / count).backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    trainable, total = trainable_parameters(model)
    assert trainable == adapter_parameter_count(model.config, 4) == 2 * 4 * (64 + 192 + 64 + 64 + 64 + 256 + 256 + 64)


def test_a_blank_infilling_intra_table_trains_in_full_beside_the_adapters():
    """The intra table starts at zero and exists to be learned: frozen, it would stay zero. The base goes to bf16,
    the adapters and the table stay fp32 (FSDP2 needs one dtype among a unit's trainable parameters)."""
    config = dataclasses.replace(MPTConfig.from_name("tiny"), intra_positions=8)
    with torch.device("meta"):
        model = add_lora(build_model(config, device="meta", init=False), rank=4, base_dtype=torch.bfloat16)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable.pop("wte_intra.weight") == torch.float32
    assert len(trainable) == 2 * 4 * 2 and all("lora_" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_adapter_count_for_mpt_7b_matches_the_spec():
    assert adapter_parameter_count(MPTConfig.from_name("mpt-7b"), 8) == 16_777_216  # spec/recsysllm.md 3.1
    assert adapter_parameter_count(MPTConfig.from_name("mpt-7b"), 8, ["Wqkv"]) == 32 * 8 * (4096 + 12288)


def test_merged_equals_unmerged():
    model = randomise_b(add_lora(build_model(MPTConfig.from_name("tiny"), seed=0), rank=4, alpha=8)).eval()
    base_keys = list(build_model(MPTConfig.from_name("tiny"), seed=0).state_dict())
    with torch.no_grad():
        unmerged = model(ids())
    merged_sd = merge_state_dict(model.state_dict(), scaling=8 / 4)  # the export's path (from a gathered state dict)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules()) and list(model.state_dict()) == base_keys
    with torch.no_grad():
        merged = model(ids())
    torch.testing.assert_close(merged, unmerged, **TOL)  # up to the fp32 rounding of W + s B A
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, merged_sd[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(unmerged, build_model(MPTConfig.from_name("tiny"), seed=0).eval()(ids()))  # B mattered


def test_an_adapter_saved_and_loaded_back_gives_the_same_model(tmp_path):
    trained = randomise_b(add_lora(build_model(MPTConfig.from_name("tiny"), seed=0), rank=4, alpha=8,
                                   targets=["Wqkv", "down_proj"])).eval()
    save_adapter(tmp_path / "a", adapter_tensors(trained.state_dict()), 4, 8, 0.0, ["Wqkv", "down_proj"])
    loaded = load_adapter(build_model(MPTConfig.from_name("tiny"), seed=0), tmp_path / "a").eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids()), trained(ids()))
    assert not isinstance(loaded.blocks[0].attn.out_proj, LoRALinear)  # only the adapter's targets


# --------------------------------------------------------------------------------------------------- bad input


def test_bad_options_and_adapters_name_their_culprit(tmp_path):
    tiny = MPTConfig.from_name("tiny")
    with pytest.raises(AdapterError, match=r"rank = 0: must be an integer >= 1"):
        add_lora(build_model(tiny, seed=0), rank=0)
    with pytest.raises(AdapterError, match=r"target module 'q_proj' is not a Linear of our MPT"):
        add_lora(build_model(tiny, seed=0), targets=["Wqkv", "q_proj"])
    for override, key in (("--lora.rank=0", "lora.rank"), ("--lora.targets=[Wqkv,q_proj]", "lora.targets"),
                          ("--lora.dropout=1", "lora.dropout"), ("--lora.alpha=0", "lora.alpha")):
        with pytest.raises(ConfigError, match=rf"key '{key}'"):
            load_config(TINY, [override])

    good = tmp_path / "good"
    save_adapter(good, adapter_tensors(add_lora(build_model(tiny, seed=0), rank=4, alpha=8).state_dict()), 4, 8, 0.0)

    # another base: d_model 32 -> the first mis-shaped tensor, with both shapes
    narrow = dataclasses.replace(tiny, d_model=32)
    with pytest.raises(AdapterError, match=r"'base_model\.model\.transformer\.blocks\.0\.attn\.Wqkv\.lora_A\.weight' "
                                           r"has shape \(4, 64\), but the model \(rank 4\) needs \(4, 32\)"):
        load_adapter(build_model(narrow, seed=0), good)
    # fewer blocks -> the tensor of the block that does not exist
    with pytest.raises(AdapterError, match=r"'base_model\.model\.transformer\.blocks\.1\.attn\.Wqkv\.lora_A\.weight' "
                                           r"is for block 1, but the model has 1 blocks"):
        load_adapter(build_model(dataclasses.replace(tiny, n_layers=1), seed=0), good)

    def variant(name, config=None, drop=None, rename=None):
        from safetensors.torch import load_file, save_file

        out = tmp_path / name
        out.mkdir()
        cfg = json.loads((good / ADAPTER_CONFIG).read_text())
        cfg.update(config or {})
        (out / ADAPTER_CONFIG).write_text(json.dumps(cfg))
        tensors = load_file(good / ADAPTER_WEIGHTS)
        if drop:
            del tensors[drop]
        if rename:
            tensors[rename[1]] = tensors.pop(rename[0])
        save_file(tensors, out / ADAPTER_WEIGHTS)
        return out

    key = "base_model.model.transformer.blocks.1.ffn.up_proj.lora_B.weight"
    with pytest.raises(AdapterError, match=r"'base_model\.model\.transformer\.blocks\.0\.attn\.Wqkv\.lora_A\.weight' "
                                           r"has shape \(4, 64\), but the model \(rank 2\) needs \(2, 64\)"):
        load_adapter(build_model(tiny, seed=0), variant("rank", {"r": 2}))
    with pytest.raises(AdapterError, match=r"target module 'query_key_value' is not a Linear of our MPT"):
        load_adapter(build_model(tiny, seed=0), variant("target", {"target_modules": ["Wqkv", "query_key_value"]}))
    with pytest.raises(AdapterError, match=r"adapter_config\.json: LoRA rank = 0"):
        load_adapter(build_model(tiny, seed=0), variant("rank0", {"r": 0}))
    with pytest.raises(AdapterError, match=r"use_dora = True is not supported"):
        load_adapter(build_model(tiny, seed=0), variant("dora", {"use_dora": True}))
    with pytest.raises(AdapterError, match=rf"missing tensor\(s\) \['{key}'\]"):
        load_adapter(build_model(tiny, seed=0), variant("missing", drop=key))
    with pytest.raises(AdapterError, match=r"'base_model\.model\.transformer\.blocks\.1\.ffn\.gate_proj\.lora_B\."
                                           r"weight' adapts 'ffn\.gate_proj', which is not among"):
        load_adapter(build_model(tiny, seed=0), variant("name", rename=(key, key.replace("up_proj", "gate_proj"))))
    with pytest.raises(AdapterError, match=r"tensor 'transformer\.blocks\.1\.ffn\.up_proj\.lora_B\.weight' is not a "
                                           r"LoRA tensor"):
        load_adapter(build_model(tiny, seed=0), variant("prefix", rename=(key, key.removeprefix("base_model.model."))))
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        load_adapter(build_model(tiny, seed=0), tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------- FSDP2 path


def test_under_fsdp2_with_activation_checkpointing_only_adapters_get_gradients(world_of_one, one_thread):
    """The sharded build (adapters added on meta, filled from rank 0), activation checkpointing with adapter dropout
    (the recomputation must draw the same masks) against the plain sharded model: the same gradients, none on the
    base, block 0's adapters reached (spec/recsysllm.md pitfall P15)."""
    config = MPTConfig.from_name("tiny")
    batch = {"input_ids": ids(2, 16), "labels": ids(2, 16)}
    d = dist_utils.Dist(0, 1, 0, torch.device("cpu"), init_device_mesh("cpu", (1,), mesh_dim_names=("dp",)))
    lora = dataclasses.replace(load_config(TINY).lora, enabled=True, rank=4, dropout=0.2)

    def grads(checkpointing: bool):
        pcfg = dataclasses.replace(load_config(TINY).parallel, mixed_precision="fp32",
                                   activation_checkpointing=checkpointing)
        model = dist_utils.build_sharded_model(config, d, pcfg, seed=3, lora=lora)
        model.train()
        torch.manual_seed(11)
        loss_sum, count = loss_sum_and_count(model, batch, "cpu")
        (loss_sum / count).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in name), name
        return {n: p.grad.full_tensor().clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert len(plain) == 2 * 4 * config.n_layers
    for (name, a), b in zip(plain.items(), checkpointed.values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
    block0_b = [g for n, g in plain.items() if n.startswith("blocks.0.") and "lora_B" in n]
    assert block0_b and all(g.abs().sum() > 0 for g in block0_b)


# --------------------------------------------------------------------------------------------------- entry points


def test_train_py_with_lora_learns_and_exports_merged_and_peft(tiny_data, tmp_path, one_thread, capsys):
    out = tmp_path / "pre"
    train.main([TINY, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--lora.enabled=true", "--optim.lr=5e-3",
                "--train.max_steps=20", "--checkpoint.interval=0", "--log.interval=1"])
    assert "trainable parameters: 16,384 of 147,776 (11.09%); LoRA rank 8" in capsys.readouterr().out
    loss = [r["loss"] for r in read_metrics(out)]
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.2, loss
    # from scratch: the base is MPT's seeded init; merged export == that base + the exported adapter
    base = build_model(MPTConfig.from_name("tiny"), seed=load_config(TINY).run.seed)
    with torch.no_grad():
        via_adapter = load_adapter(base, out / "model" / "adapter").eval()(ids())
        torch.testing.assert_close(load_model(out / "model")(ids()), via_adapter, **TOL)
    assert "merged into these weights" in (out / "model" / "README.md").read_text()


def test_finetune_with_lora_exports_an_adapter_that_peft_loads_onto_transformers_mpt(tiny_data, hf_base, tmp_path,
                                                                                      one_thread):
    out = tmp_path / "ft"
    finetune.main([TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", f"--model.init_from={hf_base}",
                   "--lora.enabled=true", "--lora.rank=4", "--lora.alpha=8", "--optim.lr=1e-2", "--train.max_steps=16"])
    loss = [r["loss"] for r in read_metrics(out)]
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 0.5, loss

    adapter = out / "model" / "adapter"
    written = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert (written["r"], written["lora_alpha"], written["base_model_name_or_path"]) == (4, 8, str(hf_base))
    reference = transformers.MptForCausalLM.from_pretrained(hf_base).eval()
    peft_model = peft.PeftModel.from_pretrained(reference, adapter).eval()
    # every tensor of the file landed in the peft model (no key silently skipped), with its value
    from safetensors.torch import load_file

    stored = load_file(adapter / ADAPTER_WEIGHTS)
    in_peft = peft.get_peft_model_state_dict(peft_model)
    assert sorted(in_peft) == sorted(stored) and len(stored) == 2 * 4 * 2
    assert all(torch.equal(in_peft[k], stored[k]) for k in stored)
    assert any(stored[k].abs().sum() > 0 for k in stored if "lora_B" in k)  # trained: B moved off zero

    x = ids(3, 20)
    with torch.no_grad():
        ours = load_model(out / "model")(x)  # our merged export (float32: tiny-finetune.yaml's export_dtype)
        theirs = peft_model(input_ids=x).logits
        torch.testing.assert_close(ours, theirs, **TOL)
        base_logits = load_model(hf_base)(x)
    assert (ours - base_logits).abs().max() > 1e-3  # the adapters changed the model: the comparison can fail


def test_kill_and_resume_with_lora_continues_with_the_same_losses(tiny_data, hf_base, tmp_path, one_thread):
    """Adapter dropout on (the RNG states travel with the checkpoint); the checkpoint holds the adapters and their
    optimizer state only; a resume with another rank stops naming lora.rank."""
    args = [TINY_FT, f"--data.path={tiny_data}", f"--model.init_from={hf_base}", "--lora.enabled=true",
            "--lora.dropout=0.1", "--train.max_steps=8", "--checkpoint.interval=4", "--checkpoint.export_final=false"]
    finetune.main(args + [f"--run.out_dir={tmp_path / 'whole'}"])
    stopped = tmp_path / "stopped"
    finetune.main(args + [f"--run.out_dir={stopped}", "--train.stop_after=4"])
    saved = dcp.FileSystemReader(str(stopped / "checkpoints" / "step-00000004")).read_metadata()
    model_keys = [k for k in saved.state_dict_metadata if k.startswith("model.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys), model_keys
    with pytest.raises(SystemExit, match=r"lora\.rank: 8 -> 4"):
        finetune.main(args + [f"--run.out_dir={stopped}", "--lora.rank=4"])
    finetune.main(args + [f"--run.out_dir={stopped}"])
    whole = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole")}
    resumed = {r["step"]: r["loss"] for r in read_metrics(stopped)}
    assert sorted(resumed) == list(range(1, 9))
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6), step
    assert resumed[8] != whole[4]  # the run moved on


def test_two_gloo_ranks_with_lora_match_one(tiny_data, tmp_path):
    """bf16 mixed precision (the base frozen in bf16, fp32 adapters) and activation checkpointing on 2 ranks == the
    same on 1 rank (no adapter dropout: each rank draws its own masks)."""
    args = ("--lora.enabled=true", "--lora.dropout=0", "--optim.lr=5e-3", "--train.max_steps=4",
            "--checkpoint.interval=0", "--checkpoint.export_final=false", "--parallel.mixed_precision=bf16")
    log = launch("train.py", 2, tmp_path / "two", *args, "--parallel.activation_checkpointing=true", data=tiny_data)
    assert "the base frozen in bf16" in log
    launch("train.py", 1, tmp_path / "one", *args, data=tiny_data)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert_same(two, one, range(1, 5))
    assert two[4] != two[1]


# --------------------------------------------------------------------------------------------------- memory


def test_memory_estimate_for_7b_lora_on_one_gpu():
    from training.memory import estimate

    c = MPTConfig.from_name("mpt-7b")
    lora = dataclasses.replace(load_config(TINY).lora, enabled=True)
    est = estimate(c, gpus=1, micro_batch=1, seq_len=2048, mixed_precision="bf16", activation_checkpointing=True,
                   lora=lora)
    assert est["frozen base weights (bf16, sharded)"] == 2 * 6_649_286_656
    assert est["adapters: fp32 master + grads + LION (sharded)"] == 12 * 16_777_216
    assert est["total"] < 40e9  # fits one 40 GB GPU
    full = estimate(c, gpus=1, micro_batch=1, seq_len=2048, mixed_precision="bf16", activation_checkpointing=True)
    assert full["total"] > 80e9  # full fine-tuning does not fit even 80 GB
