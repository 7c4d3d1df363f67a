"""Scoring your own test pairs (data/prepare/own_files.py writes eval/<name>/{text,yes_no}_test.jsonl):

    predictions, metrics = evaluate_text(model, tokenizer, examples, batch_size=8, max_new_tokens=64, stop_strings=())
    predictions, metrics = evaluate_yes_no(model, tokenizer, examples, batch_size=8, device="cuda", yes="Yes", no="No")

text: greedy decoding of each prompt (evaluation/generate.py), the output compared with "target_text": exact match
after stripping whitespace, and a case- and whitespace-insensitive match (evaluation/metrics.text_match_metrics).

yes_no: no generation. The score of a prompt is P(yes) / (P(yes) + P(no)) from the model's next-token distribution
after the prompt, comparing the first token of the yes answer with the first token of the no answer; accuracy at
0.5 and ROC AUC against "target_label" (evaluation/metrics.roc_auc). This is the protocol of LLM-recommendation
papers that ask "will the user like this item? Yes/No" and report AUC (TALLRec, Bao et al. 2023, and its
successors).

Which tokens: the build tokenises prompt and response separately (input_ids = tokens(prompt) + tokens(response) +
EOS), so during fine-tuning the token that followed a prompt was the first token of the response *encoded alone*.
The answer strings are therefore encoded alone too (no leading space unless the training responses had one), and
must be spelled as the training responses are: own_files.py writes the training responses' most frequent yes and
no spellings to eval/<name>/yes_no_answers.json. Only each answer's first token is compared (for "Yes." that is
the token of "Yes"); the two must differ.
"""
from typing import Optional, Sequence

import torch

from data.formats.tokenizer import EOS
from evaluation.generate import GenerationConfig, by_length, left_pad, run_generation
from evaluation.metrics import roc_auc, text_match_metrics


def _encode(tokenizer, texts: Sequence[str]) -> list:
    """Each text alone, as the build tokenised prompts and responses (no special tokens added)."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def answer_token(tokenizer, answer: str) -> int:
    """The first token of `answer` encoded alone (what follows the prompt in training)."""
    ids = _encode(tokenizer, [answer])[0]
    if not ids:
        raise ValueError(f"answer {answer!r} encodes to no token")
    return ids[0]


@torch.no_grad()
def yes_no_scores(model, tokenizer, prompts: Sequence[str], batch_size: Optional[int], device=None, yes: str = "Yes",
                  no: str = "No", token_budget: Optional[int] = None) -> list:
    """P(yes) / (P(yes) + P(no)) for each prompt, from the next-token distribution after its last token.

    yes, no: the answer strings as the training responses spell them; their first tokens (encoded alone) are
    compared. The two probabilities share the softmax's normaliser, so the score is sigmoid(logit_yes - logit_no)
    of the logits at each prompt's last token. Prompts are left padded into batches (evaluation/generate.left_pad):
    the attention mask keeps the pad keys out and ALiBi depends only on distances, so a prompt's logits are those of
    running it alone, and the last column is every prompt's last real token. device: default the model's.
    batch_size, token_budget: at most this many prompts, tokens (prompts x longest) a batch (generate.by_length).
    """
    yes_id, no_id = answer_token(tokenizer, yes), answer_token(tokenizer, no)
    if yes_id == no_id:
        raise ValueError(f"the answers {yes!r} and {no!r} start with the same token {yes_id}: they cannot be told "
                         f"apart")
    device = device if device is not None else model.wte.weight.device
    pad_id = tokenizer.token_to_id(EOS)
    ids = _encode(tokenizer, prompts)
    scores = [0.0] * len(ids)
    for idx in by_length([len(p) for p in ids], batch_size, token_budget):
        batch, mask = left_pad([ids[i] for i in idx], pad_id, device)  # (B, S) each
        logits = model(batch, attention_mask=mask, last_token_only=True)[:, -1]  # (B, V) fp32
        p_yes = torch.sigmoid(logits[:, yes_id] - logits[:, no_id])  # (B,)
        for i, p in zip(idx, p_yes.tolist()):
            scores[i] = p
    return scores


def evaluate_yes_no(model, tokenizer, examples: Sequence[dict], batch_size: Optional[int], device=None,
                    yes: str = "Yes", no: str = "No", token_budget: Optional[int] = None) -> tuple:
    """examples: records of a yes_no file ("id", "prompt", "target_label") -> (predictions, metrics).

    predictions: per example {"id", "target_label", "p_yes", "prediction"} (prediction 1 when p_yes >= 0.5).
    metrics: accuracy at 0.5, auc (None when the examples hold one class only), n, positives, the answers."""
    scores = yes_no_scores(model, tokenizer, [x["prompt"] for x in examples], batch_size, device, yes, no,
                           token_budget)
    labels = [int(x["target_label"]) for x in examples]
    predicted = [int(s >= 0.5) for s in scores]
    predictions = [{"id": x["id"], "target_label": t, "p_yes": s, "prediction": y}
                   for x, t, s, y in zip(examples, labels, scores, predicted)]
    positives = sum(labels)
    auc: Optional[float] = roc_auc(scores, labels) if 0 < positives < len(labels) else None
    metrics = {"accuracy": sum(y == t for y, t in zip(predicted, labels)) / len(labels), "auc": auc,
               "n": len(labels), "positives": positives, "threshold": 0.5, "yes": yes, "no": no,
               "yes_token": answer_token(tokenizer, yes), "no_token": answer_token(tokenizer, no)}
    return predictions, metrics


def evaluate_text(model, tokenizer, examples: Sequence[dict], batch_size: Optional[int], max_new_tokens: int,
                  stop_strings: Sequence[str] = (), token_budget: Optional[int] = None) -> tuple:
    """examples: records of a text file ("id", "prompt", "target_text") -> (predictions, metrics). batch_size,
    token_budget: how generation batches the prompts (generate.run_generation).

    Greedy decoding, stopping at EOS, a stop string or max_new_tokens. predictions: per example {"id",
    "target_text", "text", "finish_reason", "n_tokens"}; metrics: text_match_metrics and the finish reasons."""
    eos_id = tokenizer.token_to_id(EOS)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=eos_id,
                           stop_strings=tuple(stop_strings))
    outputs = [per_prompt[0] for per_prompt in run_generation(model, tokenizer, examples, cfg, batch_size, "greedy",
                                                              token_budget=token_budget)]
    predictions = [{"id": x["id"], "target_text": x["target_text"], "text": g.text, "finish_reason": g.finish_reason,
                    "n_tokens": len(g.tokens)} for x, g in zip(examples, outputs)]
    metrics = text_match_metrics([g.text for g in outputs], [x["target_text"] for x in examples])
    reasons: dict = {}
    for g in outputs:
        reasons[g.finish_reason] = reasons.get(g.finish_reason, 0) + 1
    metrics["finish_reasons"] = dict(sorted(reasons.items()))
    return predictions, metrics
