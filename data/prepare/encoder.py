"""The one place where the build turns text into token ids (and token counts).

Every text the build writes is made of lines: a history is one line per item. Many lines repeat across
texts (an item rated 5.0 by a thousand users; the same history line in a user's validation and test
prompts; every chunk a long history is tried in), so with a *line-local* tokenizer the build encodes each
distinct line once and joins the lines' ids with the newline token:

    ids("a\\nb\\n\\nc") = ids("a") + [nl] + ids("b") + [nl] + [nl] + ids("c")

That holds for a byte-level BPE behind the GPT-2 pre-tokenizer regex (GPT-NeoX's, and the BPE data/prepare/
bpe.py trains) when no line starts or ends with whitespace, no three newlines follow each other and the
text does not end with a newline: the regex then makes every newline a pre-token of its own (a longer run,
or a final one, would be cut into longer pieces), never joins one with a neighbouring character, and BPE
merges stay inside a pre-token (`line_local` checks the tokenizer, `Encoder._split` each text). Any other text,
or any other tokenizer, is encoded whole. Nothing outside this module knows about it: callers ask for `ids` or
`counts` of texts.

It is checked while the build runs: the first texts, and then one text in SPOT_CHECK_EVERY, are also
encoded whole, and a difference stops the build with the text named.
"""
import array
import json
from itertools import chain

SPOT_CHECK_FIRST = 32
SPOT_CHECK_EVERY = 500
# The cache of encoded lines (or texts) starts again when it would hold more than this many tokens (4 bytes each)
# or entries (about 150 bytes each, with their text): ~100 MB at most.
MAX_CACHED_TOKENS = 1 << 23
MAX_CACHED = 1 << 19


def line_local(tok) -> bool:
    """True when a text's ids are its lines' ids joined by the newline token (module doc): a byte-level BPE
    without dropout whose pre-tokenizer is the GPT-2 regex, no normaliser but NFC, the newline one token of
    its own, and no added token that contains a newline or strips the whitespace around it."""
    model, pre, norm = tok.model, _spec(tok.pre_tokenizer), _spec(tok.normalizer)
    if type(model).__name__ != "BPE" or getattr(model, "dropout", None) not in (None, 0, 0.0):
        return False
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        return False
    if norm and norm.get("type") != "NFC":
        return False
    if len(tok.encode("\n", add_special_tokens=False).ids) != 1:
        return False
    return not any("\n" in t.content or t.lstrip or t.rstrip for t in tok.get_added_tokens_decoder().values())


def _spec(component) -> dict:
    # the component's own JSON (serialising the whole tokenizer would copy its vocabulary and merges)
    return json.loads(component.__getstate__()) if component is not None else {}


Text = str | list[str]  # a text, or the list of its lines (the text is "\n".join of them)


def _dirty(line: str) -> bool:
    """A line whose ids inside a text can differ from its own: whitespace next to a newline joins it into one
    pre-token (str.isspace is a superset of the regex's Unicode White_Space, so this errs on the side of
    encoding whole); or a line with a newline in it (given in a list of lines)."""
    return bool(line) and (line[0].isspace() or line[-1].isspace() or "\n" in line)


def _line_list(text: Text) -> list[str] | None:
    """The lines of a text, or None where its newlines cannot each be a pre-token of their own: a final run of
    newlines (a last line that is empty), or a run of three or more (two empty lines in a row)."""
    if isinstance(text, str):
        return None if text.endswith("\n") or "\n\n\n" in text else text.split("\n")
    if not text:
        return [""]
    if text[-1] == "":
        return None
    empty = text.count("")  # (lists of lines have at most a few)
    at = -1
    for _ in range(empty):
        nxt = text.index("", at + 1)
        if nxt == at + 1 and at >= 0:
            return None
        at = nxt
    return text


def _joined(text: Text) -> str:
    return text if isinstance(text, str) else "\n".join(text)


class Encoder:
    """ids (arrays of uint32) and token counts of texts, without special tokens; batch encoding on the tokenizer's
    threads."""

    def __init__(self, tok):
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # fast: no character offsets
        nl = tok.encode("\n", add_special_tokens=False).ids
        self.nl_id = nl[0] if line_local(tok) else None
        # ids are kept as the bytes of uint32 arrays: a text's ids are then its lines' bytes joined by the newline's
        self._nl = array.array("I", [self.nl_id or 0]).tobytes()
        self._lines: dict[str, bytes] = {}  # a line -> its ids
        self._dirty_lines: set[str] = set()  # lines seen that `_dirty` rules out
        self._texts: dict[str, bytes] = {}  # a text encoded whole -> its ids
        self._cached_tokens = 0
        self.encoded_tokens = 0  # tokens the tokenizer produced (the rest came from the cache)
        self._checked = 0

    def _encode(self, cache: dict, todo: list[str], keep) -> None:
        """Encode `todo` (not in `cache`, no repeats) into `cache`; when the caches are full they start again, but
        for the texts and lines of keep() (those the caller needs)."""
        encoded = [array.array("I", e.ids).tobytes() for e in self._encode_batch(todo, add_special_tokens=False)]
        n = sum(map(len, encoded)) // 4
        self.encoded_tokens += n
        if self._cached_tokens + n > MAX_CACHED_TOKENS or len(self._lines) + len(self._texts) + len(todo) > MAX_CACHED:
            of_lines, keep = cache is self._lines, set(keep())
            self._lines = {t: v for t, v in self._lines.items() if t in keep}
            self._texts = {t: v for t, v in self._texts.items() if t in keep}
            self._dirty_lines &= keep
            self._cached_tokens = (sum(map(len, self._lines.values())) + sum(map(len, self._texts.values()))) // 4
            cache = self._lines if of_lines else self._texts
        cache.update(zip(todo, encoded))
        self._cached_tokens += n

    def _split(self, texts: list[Text]) -> tuple[list[list[str] | None], list[str | None]]:
        """(each text's lines, or None where the text is encoded whole; those texts, joined), everything needed
        in the caches. (The work on every line is done by set operations, in C: most lines are cached already.)"""
        split: list = [None] * len(texts)
        if self.nl_id is not None:
            split = [_line_list(t) for t in texts]
            present = [lines for lines in split if lines is not None]
            # (difference with a dict looks each line up in it; `- dict.keys()` would copy the whole cache)
            new = set(chain.from_iterable(present)).difference(self._lines, self._dirty_lines)
            if new:
                dirty = {x for x in new if _dirty(x)}
                self._dirty_lines |= dirty
                if new - dirty:
                    self._encode(self._lines, list(new - dirty), lambda: chain.from_iterable(present))
            if self._dirty_lines:
                split = [None if lines is None or not self._dirty_lines.isdisjoint(lines) else lines
                         for lines in split]
        whole = [_joined(t) if lines is None else None for t, lines in zip(texts, split)]
        todo = [t for t in dict.fromkeys(whole) if t is not None and t not in self._texts]
        if todo:
            self._encode(self._texts, todo, lambda: chain(
                (t for t in whole if t is not None), chain.from_iterable(x for x in split if x is not None)))
        return split, whole

    def ids(self, texts: list[Text]) -> list[array.array]:
        """The ids of each text (a string, or the list of its lines)."""
        split, whole = self._split(texts)
        lines_of, texts_cache = self._lines.__getitem__, self._texts  # (after _split: it may have started again)
        out = [array.array("I", texts_cache[w] if lines is None else self._nl.join(map(lines_of, lines)))
               for w, lines in zip(whole, split)]
        self._spot_check(texts, out, lambda e: array.array("I", e.ids))
        return out

    def counts(self, texts: list[Text]) -> list[int]:
        """The token count of each text (a string, or the list of its lines)."""
        split, whole = self._split(texts)
        lines_of, texts_cache = self._lines.__getitem__, self._texts
        out = [len(texts_cache[w]) // 4 if lines is None else sum(map(len, map(lines_of, lines))) // 4 + len(lines) - 1
               for w, lines in zip(whole, split)]
        self._spot_check(texts, out, len)
        return out

    def _spot_check(self, texts: list[Text], got: list, of_encoding) -> None:
        if self.nl_id is None:
            return  # every text was encoded whole
        picks = []
        for t, g in zip(texts, got):
            if self._checked < SPOT_CHECK_FIRST or self._checked % SPOT_CHECK_EVERY == 0:
                picks.append((t, g))
            self._checked += 1
        whole = self._encode_batch([_joined(t) for t, _ in picks], add_special_tokens=False) if picks else []
        for (t, g), e in zip(picks, whole):
            if of_encoding(e) != g:
                raise RuntimeError(f"the line-by-line {'token count' if isinstance(g, int) else 'ids'} of a text "
                                   f"differ from its encoding (the tokenizer is not line-local as "
                                   f"data/prepare/encoder.py assumes); text: {_joined(t)[:300]!r}")
