"""README demo, step 4: hand the fine-tuned model to the Hugging Face layout and back, then recommend.

    python scripts/demo_generate.py out/demo/finetune/model out/demo/data [N_PROMPTS]

1. `to-hf` then `from-hf` (the same code paths as for MPT-7B / RecGPT-7B) and checks that the round trip
   returns bit-identical weights and logits.
2. Takes next-item prompts of the fine-tuning data, runs our 10-beam search on the KV cache, and prints the
   5 best continuations beside the true next item. (The demo model is tiny and these prompts were seen in
   fine-tuning: this shows the machinery working, not RecGPT's quality; evaluate.py measures that.)
"""
import json
import pathlib
import sys

import torch
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.generate import GenerationConfig, generate_text  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.convert import convert_from_hf, convert_to_hf  # noqa: E402


def main(model_dir="out/demo/finetune/model", data_dir="out/demo/data", n_prompts=2):
    model_dir, data_dir = pathlib.Path(model_dir), pathlib.Path(data_dir)
    hf_dir, back_dir = model_dir.parent / "hf", model_dir.parent / "from-hf"
    convert_to_hf(model_dir, hf_dir)
    convert_from_hf(hf_dir, back_dir)
    model, back = load_model(model_dir), load_model(back_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
        same = same and torch.equal(model(ids), back(ids))
    print(f"HF round trip {model_dir} -> {hf_dir} -> {back_dir}: weights and logits identical = {same}")
    if not same:
        sys.exit("round trip changed the model")

    meta = json.loads((data_dir / "meta.json").read_text())
    tokenizer = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    pairs = [json.loads(line) for line in open(data_dir / meta["instructions"]["parts"][0]["jsonl"])]
    pairs = [p for p in pairs if p["task"] == "next_item"][: int(n_prompts)]
    eos = meta["instructions"]["eos_id"]
    cfg = GenerationConfig(num_beams=10, num_return_sequences=10, max_new_tokens=48, eos_token_id=eos,
                           pad_token_id=eos, length_penalty=0.0)
    for pair, outputs in zip(pairs, generate_text(model, tokenizer, [p["prompt"] for p in pairs], cfg)):
        print("\n" + "-" * 80 + f"\nuser {pair['user']}: ...{pair['prompt'][-300:]}")
        print(f"true next item: {pair['response']}")
        for rank, g in enumerate(outputs[:5], 1):
            print(f"  beam {rank} (log-prob {g.logprob:7.2f}): {g.text.strip()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
