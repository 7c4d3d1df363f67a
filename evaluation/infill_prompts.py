"""A blank-infilling model's evaluation prompts (docs/recsysllm.md): the decoder's inputs for generation
(evaluation/generate.py, infill=) and for scoring a closed set of answers (evaluation/scoring.py).

Each prompt is the example's history as the pre-training document the build wrote (`document`: its item lines are
entities, as the pre-training collator marks them) or its instruction `prompt` (its entities are the record's
character spans when it lists them, P5's prompts, else the lines of its item block, as finetune.py's collator marks
them), then [gMASK] where the answer would be, then [START]
(data/formats/infilling.py gmask_prompt). The entity pool of the intra rule is the catalog's lines, as in training.
"""
from data.formats.tokenizer import EOS


def infill_form(cfg) -> str:
    """Which text an infilling model's prompt is made of: `document` or `prompt` (EvalConfig.infill_prompt)."""
    return cfg.infill_prompt or ("document" if cfg.task == "next_item" else "prompt")


def infill_prompts(cfg, model, tokenizer, examples, pool_texts=()) -> tuple:
    """-> (InfillPrompts, the entity trie of pool_texts, the infilling token ids)."""
    from data.formats.infilling import EntityTrie, document_entities, gmask_prompt, prompt_entities, token_entities
    from data.formats.tokenizer import add_infill_tokens, newline_id

    ids = add_infill_tokens(tokenizer, model.config.vocab_size)
    newline, eos = newline_id(tokenizer), tokenizer.token_to_id(EOS)
    form = infill_form(cfg)
    prompts = []
    for n, x in enumerate(examples):
        if form not in x:
            raise ValueError(f"example {n} (user {x.get('user')}) has no {form!r}: rebuild the benchmark with the "
                             f"current `python -m data.prepare`, which writes the infilling prompts")
        if form == "document":
            tokens = tokenizer.encode(x["document"], add_special_tokens=False).ids + [newline]
            entities = document_entities(tokens, newline, eos)
        else:
            enc = tokenizer.encode(x["prompt"], add_special_tokens=False)
            tokens = enc.ids
            entities = (token_entities(enc.offsets, x["entities"], f"example {n} (user {x.get('user')})")
                        if x.get("entities") is not None else prompt_entities(tokens, newline))
        prompts.append(gmask_prompt(tokens, entities, ids))
    pool = EntityTrie([e.ids for e in tokenizer.encode_batch(list(pool_texts), add_special_tokens=False)])
    return prompts, pool, ids


def catalog_lines(benchmark) -> list:
    """The entity pool of a benchmark (data/formats/evalfiles.py read_entity_pool), the one the training collator
    reads; none when there is no catalog (a rating-only benchmark)."""
    import pathlib

    from data.formats.evalfiles import read_entity_pool

    catalog = pathlib.Path(benchmark) / "catalog.jsonl"
    return read_entity_pool(catalog) if catalog.is_file() else []
