"""Training machinery on one CPU process: schedules, SFT masking, loss normalisation, sampler, a converted
checkpoint's step-0 loss, a tiny fine-tune that learns its prompts, validation loss, and the traps a resume or a
rerun must not fall into (the config grammar itself: tests/test_config.py).

Multi-process FSDP2 parity and kill-and-resume are in tests/test_training_dist.py.
"""
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import finetune
import train
from model.checkpoint import load_model, save_model
from model.config import MPTConfig
from model.mpt import build_model
from training import checkpoint as ckpt
from training import distributed as dist_utils
from training.config import load_config
from training.data import (IGNORE_INDEX, FilteredDataset, GlobalBatchSampler, fit_example, open_instructions,
                           open_packed, pretrain_batch, sft_batch)
from training.loop import accumulate_gradients, loss_sum_and_count, model_config
from training.schedule import check_schedule, lr_multiplier
from training.testing import EOS_ID, synthetic_pairs, write_tiny_build

TINY = "configs/train/tiny-pretrain.yaml"
TINY_FT = "configs/train/tiny-finetune.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_build(tmp_path_factory.mktemp("data"), seq_len=32, n_docs=120, n_pairs=16)


@pytest.fixture
def world_of_one():
    """A one-process gloo group (what train.py sets up without torchrun)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core CI box run several times faster with one intra-op thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def read_metrics(out_dir):
    return [json.loads(line) for line in open(out_dir / "metrics.jsonl")]


# --------------------------------------------------------------------------------------------------- schedules


def test_cosine_with_warmup_follows_composer():
    f = lambda t: lr_multiplier(t, "cosine_with_warmup", 10, 110, 0.1)  # noqa: E731
    assert [f(t) for t in (0, 1, 5, 10)] == [0.0, 0.1, 0.5, 1.0]
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # ends (and stays) at alpha_f
    assert all(f(t) >= f(t + 1) for t in range(10, 120))


def test_other_schedules():
    assert lr_multiplier(55, "linear_decay_with_warmup", 10, 100, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(3, "constant_with_warmup", 6, 100) == 0.5
    assert lr_multiplier(99, "constant_with_warmup", 6, 100) == 1.0
    assert lr_multiplier(0, "constant", 6, 100) == 1.0
    with pytest.raises(ValueError, match="schedule.name"):
        check_schedule("cosine", 0, 10, 0.1)
    with pytest.raises(ValueError, match="schedule.t_warmup"):
        check_schedule("cosine_with_warmup", 10, 10, 0.1)


# --------------------------------------------------------------------------------------------------- config


def test_finetune_defaults_follow_recgpt_yaml():
    cfg = load_config(None, [], base=finetune.BASE)
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == (1e-5, [0.9, 0.98], 1e-7)
    assert cfg.optim.decay_mode == "schedule" and cfg.schedule.t_warmup == 200 and cfg.schedule.alpha_f == 0.1


# --------------------------------------------------------------------------------------------------- data


def test_sampler_is_world_size_independent():
    n, G = 50, 8
    def union(world, mb):
        steps = []
        samplers = [GlobalBatchSampler(n, G, mb, r, world, seed=3) for r in range(world)]
        for _ in range(9):  # crosses an epoch boundary (6 steps per epoch)
            steps.append(sorted(i for s in samplers for micro in s.next_step() for i in micro))
        return steps
    ref = union(1, 1)
    assert union(2, 2) == ref and union(4, 1) == ref and union(8, 1) == ref
    assert sorted(sum(ref[:6], [])) != list(range(48))  # shuffled, and each epoch is a fresh order
    assert len(set(sum(ref[:6], []))) == 48  # no repeats within an epoch
    s = GlobalBatchSampler(n, G, 2, 0, 2, seed=3)
    s.next_step(), s.next_step()
    state = s.state_dict()
    t = GlobalBatchSampler(n, G, 1, 0, 1, seed=3)
    t.load_state_dict(state)
    assert t.step == 2
    with pytest.raises(ValueError, match="seed"):
        GlobalBatchSampler(n, G, 1, 0, 1, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="train.global_batch_size"):
        GlobalBatchSampler(n, G, 3, 0, 1, seed=3)


def test_micro_batches_by_length_keep_each_steps_examples():
    n, G, lengths = 50, 8, np.random.default_rng(0).integers(5, 500, 50)
    for world, mb in ((1, 2), (2, 2)):
        plain = [GlobalBatchSampler(n, G, mb, r, world, seed=3) for r in range(world)]
        ordered = [GlobalBatchSampler(n, G, mb, r, world, seed=3, lengths=lengths) for r in range(world)]
        for _ in range(9):
            for a, b in zip(plain, ordered):
                micro_a, micro_b = a.next_step(), b.next_step()
                assert sorted(sum(micro_a, [])) == sorted(sum(micro_b, []))  # each rank: the same examples
                flat = sum(micro_b, [])
                assert list(lengths[flat]) == sorted(lengths[flat], reverse=True)  # cut longest first
    with pytest.raises(ValueError, match="lengths has 3 entries for 50 examples"):
        GlobalBatchSampler(n, G, 1, 0, 1, seed=3, lengths=[1, 2, 3])


def test_micro_batches_by_length_give_the_same_training(tiny_data, tmp_path, one_thread):
    """The same examples per step and loss_sum / the step's valid tokens: the same run, to float summation order,
    with fewer padded positions."""
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        finetune.main([TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--train.max_steps=6",
                       "--train.micro_batch_size=2", f"--data.micro_batches_by_length={flag}"])
        runs[flag] = (read_metrics(out), load_model(out / "model").state_dict())
    (plain, w_plain), (ordered, w_ordered) = runs["false"], runs["true"]
    # fp32 sums in another order: relative differences of a few 1e-6, which six steps carry into the losses
    assert [r["loss"] for r in ordered] == pytest.approx([r["loss"] for r in plain], rel=1e-5)
    assert ordered[-1]["tokens_seen"] < plain[-1]["tokens_seen"]  # positions computed: the padding saved counts
    # LION moves each weight by +-lr per step: where the other order flips the sign of a near-zero update, that weight
    # differs by 2 lr (seen: 18 of 131,392 weights, each by 2 x 3e-3). All others agree to 1e-5
    lr = load_config(TINY_FT, base=finetune.BASE).optim.lr
    diffs = torch.cat([(w_ordered[k] - w_plain[k]).abs().flatten() for k in w_plain])
    assert int((diffs > 1e-5).sum()) <= 1e-3 * diffs.numel() and float(diffs.max()) <= 2 * lr * 6 + 1e-5
    with pytest.raises(ValueError, match="data.micro_batches_by_length"):
        train.main([TINY, f"--data.path={tiny_data}", f"--run.out_dir={tmp_path / 'pre'}", "--train.max_steps=1",
                    "--data.micro_batches_by_length=true"])


def test_finetune_batches_mask_every_prompt_token(tiny_data):
    raw = open_instructions(tiny_data)
    pairs = list(synthetic_pairs(16, 512, 0))
    batch = sft_batch(raw, list(range(16)), max_seq_len=32, eos_id=EOS_ID, pad_to="max_seq_len")
    assert batch["input_ids"].shape == (16, 32)
    for b, (prompt, response) in enumerate(pairs):
        n_p, n_r = len(prompt), len(response)
        ids, labels, mask = batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b]
        assert ids[:n_p].tolist() == prompt
        assert (labels[:n_p] == IGNORE_INDEX).all(), f"prompt token of example {b} carries a label"
        assert labels[n_p:n_p + n_r].tolist() == response  # the response is learned ...
        assert labels[n_p + n_r].item() == EOS_ID  # ... and so is EOS
        assert (labels[n_p + n_r + 1:] == IGNORE_INDEX).all() and (ids[n_p + n_r + 1:] == EOS_ID).all()  # padding
        assert mask.tolist() == [1] * (n_p + n_r + 1) + [0] * (32 - n_p - n_r - 1)
    longest = sft_batch(raw, [0, 1], max_seq_len=32, eos_id=EOS_ID, pad_to="longest")
    assert longest["input_ids"].shape[1] == max(len(p) + len(r) + 1 for p, r in pairs[:2])


def test_truncation_and_filtering():
    ids = np.arange(1, 13)
    labels = np.array([IGNORE_INDEX] * 8 + list(range(9, 13)))
    fit_ids, fit_labels = fit_example(ids, labels, max_seq_len=10, eos_id=0)
    assert fit_ids.tolist() == list(range(1, 10)) + [0]  # prompt whole, response cut, EOS last
    assert fit_labels.tolist() == [IGNORE_INDEX] * 8 + [9, 0]
    assert fit_example(ids, labels, max_seq_len=8, eos_id=0) is None  # the prompt alone fills the window

    class DS(list):
        pass
    ds = DS([{"input_ids": ids, "labels": labels}, {"input_ids": ids[:5], "labels": np.array([IGNORE_INDEX, 2, 3, 4, 5])}])
    kept = FilteredDataset(ds, max_seq_len=8)
    assert len(kept) == 1 and kept.dropped == 1


# --------------------------------------------------------------------------------------------------- loss normalisation


def test_grad_accumulation_with_uneven_valid_tokens_equals_full_batch(tiny_data, world_of_one, one_thread):
    torch.manual_seed(0)
    model = build_model(MPTConfig.from_name("tiny"), dtype=torch.float64, seed=0)  # fp64 (logits are fp32)
    raw = open_instructions(tiny_data)
    full = sft_batch(raw, list(range(8)), max_seq_len=32, eos_id=EOS_ID, pad_to="max_seq_len")
    valid = (full["labels"][:, 1:] != IGNORE_INDEX).sum(1)
    assert len(set(valid.tolist())) > 1, "the test needs examples with different numbers of target tokens"

    # reference: one forward over the whole batch, mean CE over its valid tokens
    loss_sum, count = loss_sum_and_count(model, full, "cpu")
    (loss_sum / count).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_loss = (loss_sum / count).item()
    model.zero_grad(set_to_none=True)

    # uneven micro-batches (sizes 1, 3, 4), each padded only to its own longest sequence
    micro = [sft_batch(raw, idx, max_seq_len=32, eos_id=EOS_ID, pad_to="longest") for idx in ([0], [1, 2, 3], [4, 5, 6, 7])]
    loss, n_valid = accumulate_gradients(model, micro, "cpu")
    assert n_valid == count.item()
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for n, p in model.named_parameters():  # equal up to fp32 rounding of the logits: 1e-5 of the largest entry
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-5 * ref[n].abs().max().item(),
                                   msg=lambda m: f"{n}: {m}")

    # the naive per-micro-batch mean (sum of means / 3) would differ: the test can tell them apart
    model.zero_grad(set_to_none=True)
    naive = sum(loss_sum_and_count(model, mb, "cpu")[0] / (mb["labels"][:, 1:] != IGNORE_INDEX).sum() for mb in micro) / 3
    assert abs(naive.item() - ref_loss) > 1e-4


# --------------------------------------------------------------------------------------------------- entry points


def test_step0_loss_from_converted_checkpoint(tiny_data, tmp_path, one_thread):
    config = MPTConfig.from_name("tiny")
    src = build_model(config, seed=123)
    save_model(src.state_dict(), config, tmp_path / "converted")
    out = tmp_path / "run"
    train.main([TINY, f"--data.path={tiny_data}", f"--run.out_dir={out}", f"--model.init_from={tmp_path / 'converted'}",
                "--train.max_steps=1", "--schedule.t_warmup=0", "--checkpoint.export_final=false", "--log.interval=1"])
    logged = read_metrics(out)[0]["loss"]

    # the plain model, loaded from the same directory, on the same first global batch
    plain = load_model(tmp_path / "converted")
    cfg = load_config(TINY)
    ds = open_packed(tiny_data)
    idx = GlobalBatchSampler(len(ds), cfg.train.global_batch_size, 8, 0, 1, cfg.run.seed).global_indices(0)
    with torch.no_grad():
        loss_sum, count = loss_sum_and_count(plain, pretrain_batch(ds, idx.tolist()), "cpu")
    expected = (loss_sum / count).item()
    assert logged == pytest.approx(expected, abs=1e-5), (logged, expected)
    # and not what the same run gives from scratch (guards against init_from being ignored)
    scratch = tmp_path / "scratch"
    train.main([TINY, f"--data.path={tiny_data}", f"--run.out_dir={scratch}", "--train.max_steps=1", "--schedule.t_warmup=0",
                "--checkpoint.export_final=false"])
    assert abs(read_metrics(scratch)[0]["loss"] - expected) > 1e-3


def test_tiny_finetune_learns_its_prompts(tiny_data, tmp_path, one_thread):
    out = tmp_path / "ft"
    finetune.main([TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--train.max_steps=40"])
    records = read_metrics(out)
    assert records[0]["loss"] > 5.0  # starts near log(512) = 6.2 or above
    assert records[-1]["loss"] < 0.1, f"final loss {records[-1]['loss']:.4f} (stated bound: 0.1)"
    # the exported model reproduces every response token (teacher forcing, greedy)
    model = load_model(out / "model")
    raw = open_instructions(tiny_data)
    batch = sft_batch(raw, list(range(len(raw))), max_seq_len=32, eos_id=EOS_ID, pad_to="longest")
    with torch.no_grad():
        pred = model(batch["input_ids"], attention_mask=batch["attention_mask"]).argmax(-1)[:, :-1]
    target = batch["labels"][:, 1:]
    learned = target != IGNORE_INDEX
    assert torch.equal(pred[learned], target[learned])
    assert (out / "checkpoints").is_dir() and (out / "model" / "config.yaml").is_file()


def test_exported_model_gets_the_builds_tokenizer(tmp_path):
    from data.formats.packed import FORMAT, FORMAT_VERSION
    from data.formats.tokenizer import sha256_file

    build, out = tmp_path / "build", tmp_path / "model"
    build.mkdir(), out.mkdir()
    (build / "tokenizer.json").write_text('{"model": "a tokenizer"}')
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "tokenizer": {"path": "gone/tokenizer.json", "sha256": sha256_file(build / "tokenizer.json")}}
    (build / "meta.json").write_text(json.dumps(meta))
    assert ckpt.copy_tokenizer(build, out) == out / "tokenizer.json"
    assert (out / "tokenizer.json").read_bytes() == (build / "tokenizer.json").read_bytes()
    (build / "tokenizer.json").write_text("changed since the build")  # hash mismatch: not copied, and said so
    (out / "tokenizer.json").unlink()
    with pytest.warns(UserWarning, match="not found with sha256"):
        assert ckpt.copy_tokenizer(build, out) is None
    assert not (out / "tokenizer.json").exists()


def test_resuming_with_another_config_stops_naming_the_keys(tiny_data, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    args = [TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--checkpoint.export_final=false",
            "--train.max_steps=10", "--train.stop_after=6", "--checkpoint.interval=3"]
    finetune.main(args)  # stopped at step 6 as if killed; checkpoint at step 6
    with pytest.raises(SystemExit, match=r"different config: optim\.lr: 0\.003 -> 0\.0005\. .*"
                                         r"--checkpoint\.allow_changes=\[optim\.lr\]"):
        finetune.main(args + ["--optim.lr=0.0005"])
    assert len(read_metrics(out)) == 6  # nothing ran
    capsys.readouterr()
    finetune.main(args + ["--log.interval=1", "--train.stop_after=8",  # knobs documented as safe resume quietly
                          "--data.micro_batches_by_length=true"])
    assert "resumed from" in capsys.readouterr().out
    finetune.main(args + ["--train.stop_after=null", "--optim.lr=0.0005", "--checkpoint.allow_changes=[optim.lr]"])
    printed = capsys.readouterr().out
    assert "resuming with config changes: optim.lr: 0.003 -> 0.0005" in printed and "step 10/10" in printed


def test_a_finished_run_says_so_and_reexports_only_when_asked(tiny_data, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    args = [TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--train.max_steps=4", "--schedule.t_warmup=1"]
    finetune.main(args)
    weights = (out / "model" / "model-00001-of-00001.safetensors").read_bytes()
    with pytest.raises(SystemExit, match=r"holds a finished run \(step 4 of 4.*--checkpoint\.reexport=true"):
        finetune.main(args)
    shutil.rmtree(out / "model")  # e.g. killed during the final export: the rerun exports it
    finetune.main(args)
    assert (out / "model" / "model-00001-of-00001.safetensors").read_bytes() == weights
    capsys.readouterr()
    finetune.main(args + ["--checkpoint.reexport=true"])
    assert "exporting its final model again" in capsys.readouterr().out
    assert (out / "model" / "model-00001-of-00001.safetensors").read_bytes() == weights
    assert len(read_metrics(out)) == 4  # no step ran twice


def test_validation_loss_on_the_builds_held_out_split(tiny_data, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    finetune.main([TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--train.max_steps=6",
                   "--eval.interval=2", "--eval.batches=0", "--checkpoint.export_final=true"])
    val = [r for r in read_metrics(out) if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4, 6]
    # the logged value is the mean loss over every response token of the held-out pairs, from the exported model
    model = load_model(out / "model")
    held_out = open_instructions(tiny_data, "instructions_valid")
    batch = sft_batch(held_out, list(range(len(held_out))), max_seq_len=32, eos_id=EOS_ID, pad_to="longest")
    with torch.no_grad():
        loss_sum, count = loss_sum_and_count(model, batch, "cpu")
    assert val[-1]["val_loss"] == pytest.approx((loss_sum / count).item(), rel=1e-5)
    best = min(val, key=lambda r: r["val_loss"])
    assert "best_validation_loss" in (out / "model" / "README.md").read_text()
    assert f"at step {best['step']}" in (out / "model" / "README.md").read_text()
    assert (out / "model-best" / "README.md").is_file()  # the best model, exported when it was best
    if best["step"] == 6:
        assert (out / "model-best" / "model-00001-of-00001.safetensors").read_bytes() == (out / "model" / "model-00001-of-00001.safetensors").read_bytes()
    # a build without a validation split is an error when validation is asked for, not a silent skip
    no_valid = write_tiny_build(tmp_path / "novalid", seq_len=32, n_docs=40, n_pairs=16, n_valid_docs=0,
                                n_valid_pairs=0)
    with pytest.raises(ValueError, match=r"no 'instructions_valid' split"):
        finetune.main([TINY_FT, f"--data.path={no_valid}", f"--run.out_dir={tmp_path / 'x'}", "--eval.interval=2"])


def test_validation_during_pretraining(tiny_data, tmp_path, one_thread):
    out = tmp_path / "pre"
    train.main([TINY, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--train.max_steps=4", "--eval.interval=2",
                "--eval.batches=1", "--eval.export_best=false", "--checkpoint.export_final=false"])
    val = [r for r in read_metrics(out) if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4] and all(math.isfinite(r["val_loss"]) for r in val)
    assert not (out / "model-best").exists()


def test_model_name_must_match_init_from(tmp_path):
    config = MPTConfig.from_name("tiny")
    save_model(build_model(config, seed=0).state_dict(), config, tmp_path / "m")
    cfg = load_config(TINY, [f"--model.init_from={tmp_path / 'm'}", "--model.name=demo"])
    with pytest.raises(ValueError, match=r"model\.name = demo does not describe the model in model\.init_from.*d_model"):
        model_config(cfg)
    assert model_config(load_config(TINY, [f"--model.init_from={tmp_path / 'm'}"])) == config  # name: tiny agrees
    # the name with its overrides is what is compared: tiny with another vocabulary describes a model saved so
    small = dataclasses.replace(config, vocab_size=256)
    save_model(build_model(small, seed=0).state_dict(), small, tmp_path / "v")
    assert model_config(load_config(TINY, [f"--model.init_from={tmp_path / 'v'}",
                                           "--model.overrides={vocab_size: 256}"])) == small
    with pytest.raises(ValueError, match=r"model\.name = tiny with model\.overrides does not describe .*vocab_size"):
        model_config(load_config(TINY, [f"--model.init_from={tmp_path / 'v'}", "--model.overrides={n_layers: 3}"]))


def test_dropout_under_activation_checkpointing_gives_the_same_gradients(world_of_one, one_thread):
    """With dropout, the recomputation in the backward must draw the forward's masks again (RNG preserved)."""
    config = dataclasses.replace(MPTConfig.from_name("tiny"), emb_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1)
    ids = torch.randint(1, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone()}
    d = dist_utils.Dist(0, 1, 0, torch.device("cpu"), init_device_mesh("cpu", (1,), mesh_dim_names=("dp",)))

    def grads(checkpointing: bool, preserve=True):
        pcfg = dataclasses.replace(load_config(TINY).parallel, mixed_precision="fp32",
                                   activation_checkpointing=checkpointing)
        model = dist_utils.build_sharded_model(config, d, pcfg, seed=3)
        if not preserve:  # the old wrapper, as a control: the test must be able to fail
            for block in model.blocks:
                block.checkpoint_fn.keywords["preserve_rng_state"] = False
        model.train()
        torch.manual_seed(11)
        loss_sum, count = loss_sum_and_count(model, batch, "cpu")
        (loss_sum / count).backward()
        return {n: p.grad.full_tensor().clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for (name, a), b in zip(plain.items(), checkpointed.values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
    control = grads(True, preserve=False)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(plain.values(), control.values()))


def test_benchmark_mode_reports_without_data(tmp_path, one_thread):
    out = tmp_path / "bench"
    train.main([TINY, f"--run.out_dir={out}", "--data.path=null", "--benchmark.enabled=true",
                "--benchmark.warmup_steps=1", "--benchmark.steps=2", "--log.interval=1"])
    report = json.loads((out / "benchmark.json").read_text())
    assert report["tokens_per_s_per_device"] > 0 and math.isfinite(report["loss"])
    assert report["mfu"] is None  # a CPU has no peak in the table: no invented MFU
    assert not (out / "checkpoints").exists()


def test_memory_estimate_matches_spec_arithmetic():
    from training.memory import estimate

    c = MPTConfig.from_name("mpt-7b")
    est = estimate(c, gpus=8, micro_batch=1, seq_len=2048, mixed_precision="bf16", activation_checkpointing=False)
    state = sum(v for k, v in est.items() if "(fp32, sharded)" in k)
    assert state == pytest.approx(12 * 6_649_286_656 / 8)  # 9.97 GB: spec/performance.md 6.1
    assert 22e9 < est["total"] < 26e9  # spec 6.2: about 23-25 GB of 40 on 8 x A100-40GB, micro-batch 1
    ac = estimate(c, gpus=8, micro_batch=1, seq_len=2048, mixed_precision="bf16", activation_checkpointing=True)
    assert ac["activations"] < 1e9 < est["activations"]
