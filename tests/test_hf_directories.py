"""Hugging Face MPT directories are read as they are: `load_model`, `evaluate.py --checkpoint`, `model.init_from`
and the converter take a `save_pretrained` directory (safetensors or .bin, one file or shards) and give what the
same weights give through the converter; exports carry a model card."""
import json

import pytest
import torch

import evaluate
import finetune
from model.card import read_card
from model.checkpoint import CheckpointError, layout, load_model, read_config
from model.convert import convert_from_hf, convert_to_hf
from training.testing import write_tiny_build

transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")


def tiny_hf(vocab=512, max_seq_len=256, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=vocab, max_seq_len=max_seq_len)
    model = transformers.MptForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("safe, shard", [(True, "100KB"), (True, "10GB"), (False, "100KB"), (False, "10GB")])
def test_load_model_reads_a_save_pretrained_directory(tmp_path, safe, shard):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=safe, max_shard_size=shard)
    assert layout(tmp_path / "hf") == "hf"
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = load_model(tmp_path / "hf")(ids)
        torch.testing.assert_close(direct, hf(ids).logits, atol=1e-5, rtol=1e-5)
    convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "ours")(ids), direct)  # the same weights, the same code


def test_not_a_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match="neither config.yaml .ours. nor config.json .HF."):
        read_config(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "missing")


@pytest.fixture
def hf_with_tokenizer(tmp_path):
    """A save_pretrained MPT with a tokenizer trained here, and the same model converted to our format."""
    from data.prepare.bpe import train_bpe
    texts = [f"Title: Item {i}; Rating: {1 + i % 5}.0/5.0" for i in range(50)]
    tiny_hf().save_pretrained(tmp_path / "hf")
    train_bpe(texts, 300, tmp_path / "hf" / "tokenizer.json")
    convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    return tmp_path / "hf", tmp_path / "ours", texts


def test_evaluate_takes_an_hf_directory(tmp_path, hf_with_tokenizer):
    hf, ours, texts = hf_with_tokenizer
    bench = tmp_path / "bench"
    bench.mkdir()
    with open(bench / "rating_test.jsonl", "w") as f:
        for k in range(6):
            prompt = "### Instruction:\nPredict rating for the last item.\n\n" + "\n".join(texts[k: k + 3]) + \
                     "; Rating:\n\n### Response:"
            f.write(json.dumps({"user": f"u{k}", "prompt": prompt, "target_rating": 1 + k % 5}) + "\n")
    outputs = {}
    for name, ckpt in (("hf", hf), ("ours", ours)):
        out = tmp_path / f"eval-{name}"
        evaluate.main(["--checkpoint", str(ckpt), "--benchmark", str(bench), "--task", "rating", "--out", str(out),
                       "--device", "cpu", "--max-new-tokens", "6", "--seeds", "0", "1", "--fallback-rating", "3.0"])
        outputs[name] = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert outputs["hf"] == outputs["ours"]
    assert len(outputs["hf"]) == 6 and set(outputs["hf"][0]["outputs"]) == {"0", "1"}


def test_finetune_initialises_from_an_hf_directory(tmp_path, hf_with_tokenizer):
    hf, ours, _ = hf_with_tokenizer
    data = write_tiny_build(tmp_path / "data", seq_len=32, n_docs=40, n_pairs=16)
    losses = {}
    for name, ckpt in (("hf", hf), ("ours", ours)):
        out = tmp_path / f"ft-{name}"
        finetune.main(["configs/train/tiny-finetune.yaml", f"--data.path={data}", f"--run.out_dir={out}",
                       f"--model.init_from={ckpt}", "--train.max_steps=6", "--schedule.t_warmup=1", "--log.interval=1"])
        losses[name] = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl") if '"loss"' in line]
    assert losses["hf"] == losses["ours"] and len(losses["hf"]) == 6
    card = read_card(tmp_path / "ft-hf" / "model")
    assert card["base_model"] == str(hf) and card["training"]["task"] == "finetune"
    assert card["training"]["steps"] == 6 and "last_training_loss" in card["metrics"]
    # the export in HF's layout carries the card on, and loads in transformers
    convert_to_hf(tmp_path / "ft-hf" / "model", tmp_path / "shared")
    assert read_card(tmp_path / "shared")["training"]["task"] == "finetune"
    assert "library_name: transformers" in (tmp_path / "shared" / "README.md").read_text()
    back = transformers.MptForCausalLM.from_pretrained(tmp_path / "shared").eval()
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = load_model(tmp_path / "ft-hf" / "model")(ids)
        torch.testing.assert_close(back(ids).logits, ours, atol=1e-5, rtol=1e-5)
