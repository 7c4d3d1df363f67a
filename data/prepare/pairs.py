"""Stage 3b: the instruction-tuning pairs (App. B.2) of a bucket's fine-tuning users.

Per history chunk (recgpt.md §5): a rating pair (context i1..i(n-1), i(n-1) shown without its rating, which
is the answer; skipped and counted when i(n-1) has no rating) and a next-item pair (history i1..i(n-1),
answer in). A history whose longest pair (prompt + response + EOS) would not fit `max_seq_len` is cut into
the fewest near-equal chunks whose pairs all fit (data/prepare/chunking.py).
"""
import collections

from data.formats.instructions import InstructionWriter
from data.prepare import templates
from data.prepare.chunking import Chunker
from data.prepare.encoder import Encoder
from data.prepare.manifests import ManifestWriter


def make_pairs(d: templates.Domain, group, counts: collections.Counter) -> list[tuple[str, str, str, dict]]:
    """(task, prompt, response, target info) of one history chunk (recgpt.md §5)."""
    if len(group) < 2:
        counts["chunks_too_short_for_pairs"] += 1
        return []
    pairs = []
    if d.rating is not None:
        if group[-2].rating is not None:
            prompt, response = templates.rating_pair(d, group[:-1])
            pairs.append(("rating", prompt, response, {"target_item_id": group[-2].item.id,
                                                       "target_rating": group[-2].rating}))
        else:
            counts["rating_pairs_skipped_no_rating"] += 1
    prompt, response = templates.next_item_pair(d, group[:-1], group[-1].item)
    pairs.append(("next_item", prompt, response, {"target_item_id": group[-1].item.id}))
    return pairs


def write_pairs(d: templates.Domain, source: str, users: list, enc: Encoder, chunker: Chunker,
                writer: InstructionWriter, manifest: ManifestWriter | None, counts: collections.Counter) -> None:
    """The pairs of `users`: (user, history) in order."""
    limit = chunker.limit
    if d.rating:
        def line(x):
            return templates.rating_line(d, x)
    else:
        def line(x):
            return templates.next_item_line(d, d.history, x)
    overhead = max(enc.counts([templates.wrap_prompt(t, d, []) for t in
                               (templates.RATING_TASK, templates.NEXT_ITEM_TASK)])) + 8

    def longest(pairs) -> int:  # what must stay under max_seq_len: a pair's prompt + response tokens
        n = enc.counts([t for _, prompt, response, _ in pairs for t in (prompt, response)])
        return max((a + b for a, b in zip(n[::2], n[1::2])), default=0)

    for user, history in users:
        whole_counts = collections.Counter()
        pairs = make_pairs(d, history, whole_counts)
        if longest(pairs) < limit:
            chunks = [(history, pairs)]
            counts.update(whole_counts)
        else:
            groups = chunker.split(history, line, overhead,
                                   lambda gs: [longest(make_pairs(d, g, collections.Counter())) for g in gs])
            chunks = [(g, make_pairs(d, g, counts)) for g in groups]
        for j, (g, g_pairs) in enumerate(chunks):
            ids = enc.ids([t for _, prompt, response, _ in g_pairs for t in (prompt, response)])
            for (task, prompt, response, target), prompt_ids, response_ids in zip(g_pairs, ids[::2], ids[1::2]):
                record = {"task": task, "source": source, "domain": d.name, "user": user, "chunk": j,
                          "n_history": len(g) - 1, "prompt": prompt, "response": response, **target}
                writer.add(record, prompt_ids, response_ids)
                counts[f"pairs_{task}"] += 1
            if manifest:
                manifest.add("finetune", g)
    counts["finetune_users"] += len(users)
