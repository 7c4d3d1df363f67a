"""The one place where the build turns text into token ids (and token counts).

Every text the build writes is made of lines: a history is one line per item. Many lines repeat across
texts (an item rated 5.0 by a thousand users; the same history line in a user's validation and test
prompts; every chunk a long history is tried in), so with a *line-local* tokenizer the build encodes each
distinct line once and joins the lines' ids with the newline token:

    ids("a\\nb\\n\\nc") = ids("a") + [nl] + ids("b") + [nl] + [nl] + ids("c")

That holds for a byte-level BPE behind the GPT-2 pre-tokenizer regex (GPT-NeoX's, and the BPE data/build/
bpe.py trains) when no line starts or ends with whitespace, no three newlines follow each other and the
text does not end with a newline: the regex then makes every newline a pre-token of its own (a longer run,
or a final one, would be cut into longer pieces), never joins one with a neighbouring character, and BPE
merges stay inside a pre-token (`line_local` checks the tokenizer, `_by_lines` each text). Any other text,
or any other tokenizer, is encoded whole. Nothing outside this module knows about it: callers ask for `ids` or `counts` of texts.

It is checked while the build runs: the first texts, and then one text in SPOT_CHECK_EVERY, are also
encoded whole, and a difference stops the build with the text named.
"""
import array
import json

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


def _by_lines(text: str) -> list[str] | None:
    """The lines of `text` when its ids are its lines' ids joined by newlines, else None."""
    if text.endswith("\n") or "\n\n\n" in text:
        return None  # a final run of newlines, or a run of three or more, is not a pre-token per newline
    lines = text.split("\n")
    for line in lines:
        # whitespace next to a newline joins it into one pre-token (str.isspace is a superset of the regex's
        # Unicode White_Space, so this errs on the side of encoding whole)
        if line and (line[0].isspace() or line[-1].isspace()):
            return None
    return lines


class Encoder:
    """ids (arrays of uint32) and token counts of texts, without special tokens; batch encoding on the tokenizer's
    threads."""

    def __init__(self, tok):
        self.tok = tok
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # fast: no character offsets
        nl = tok.encode("\n", add_special_tokens=False).ids
        self.nl_id = nl[0] if line_local(tok) else None
        self._cache: dict[str, array.array] = {}  # a line (or, without line-locality, a whole text) -> ids
        self._cached_tokens = 0
        self.encoded_tokens = 0  # tokens the tokenizer produced (the rest came from the cache)
        self._checked = 0

    def _encode(self, texts: list[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if not todo:
            return
        encoded = [array.array("I", e.ids) for e in self._encode_batch(todo, add_special_tokens=False)]
        n = sum(map(len, encoded))
        self.encoded_tokens += n
        if self._cached_tokens + n > MAX_CACHED_TOKENS or len(self._cache) + len(todo) > MAX_CACHED:
            self._cache = {t: self._cache[t] for t in texts if t in self._cache}  # keep what this call needs
            self._cached_tokens = sum(map(len, self._cache.values()))
        self._cache.update(zip(todo, encoded))
        self._cached_tokens += n

    def _lines(self, texts: list[str]) -> list[list[str] | None]:
        """Each text's lines (None: the text is encoded whole), everything needed in the cache."""
        split = [_by_lines(t) for t in texts] if self.nl_id is not None else [None] * len(texts)
        self._encode([x for t, lines in zip(texts, split) for x in (lines if lines is not None else (t,))])
        return split

    def ids(self, texts: list[str]) -> list[array.array]:
        split = self._lines(texts)
        cache, nl, out = self._cache, array.array("I", [self.nl_id or 0]), []  # (after _lines: it may start again)
        for t, lines in zip(texts, split):
            if lines is None:
                out.append(array.array("I", cache[t]))
                continue
            ids = array.array("I", cache[lines[0]])
            for line in lines[1:]:
                ids += nl
                ids += cache[line]
            out.append(ids)
        self._spot_check(texts, out, lambda e: array.array("I", e.ids))
        return out

    def counts(self, texts: list[str]) -> list[int]:
        split = self._lines(texts)
        cache = self._cache
        out = [len(cache[t]) if lines is None else sum(map(len, map(cache.__getitem__, lines))) + len(lines) - 1
               for t, lines in zip(texts, split)]
        self._spot_check(texts, out, len)
        return out

    def _spot_check(self, texts: list[str], got: list, of_encoding) -> None:
        if self.nl_id is None:
            return  # every text was encoded whole
        picks = []
        for t, g in zip(texts, got):
            if self._checked < SPOT_CHECK_FIRST or self._checked % SPOT_CHECK_EVERY == 0:
                picks.append((t, g))
            self._checked += 1
        whole = self._encode_batch([t for t, _ in picks], add_special_tokens=False) if picks else []
        for (t, g), e in zip(picks, whole):
            if of_encoding(e) != g:
                raise RuntimeError(f"the line-by-line {'token count' if isinstance(g, int) else 'ids'} of a text "
                                   f"differ from its encoding (the tokenizer is not line-local as "
                                   f"data/build/encoder.py assumes); text: {t[:300]!r}")
