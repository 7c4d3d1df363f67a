"""Token ids of texts made of lines, cut out of one encoding instead of encoding every variant.

Every text the pipeline tokenizes has one shape (data/templates.py): a head, the item lines joined by
"\\n", and a tail:

    document = header "\\n\\n"                                + lines
    prompt   = "### Instruction:\\n" task "\\n" header "\\n\\n" + lines + "\\n\\n### Response:"

Chunking a long history (pre-training documents, fine-tuning pairs) and trimming an evaluation prompt
to its most recent items need the ids, or only the token count, of the same head and tail around
other runs of consecutive lines. With a line-local tokenizer (data.tokenizer.line_local: a byte-level
BPE behind the GPT-2 pre-tokenizer regex) those are pieces of the whole text's ids:

    ids(head + lines[a:b] + tail) = ids[:start(0)] + ids[start(a):end(b - 1)] + ids[end(n - 1):]

when no line is empty or starts or ends with whitespace and every newline of the text is a token of
its own: the regex then never joins a character of a line with anything across a newline, so the
head, each line and the tail are pre-tokenized and merged alike in every such text. `LineSpans.of`
checks both conditions (the second on the ids themselves) and returns None when either fails; the
caller then encodes. A line encoded alone has the ids it has inside any such text, so a line the whole
text lacks (a rating prompt's hidden last line) is encoded alone and joined in (`join(..., last=)`).
"""
import re
from typing import Optional

# whitespace after or before a newline: an empty line, or a line that starts or ends with whitespace
# (Python's \s is a superset of the tokenizer regex's Unicode White_Space, so this errs on the side of
# encoding; the pattern starts with a literal "\n", which keeps the search fast)
_SPACE_AT_NEWLINE = re.compile(r"\n(?:(?<=\s\n)|\s)")


def _clean_lines(body: str) -> bool:
    return bool(body) and not body[0].isspace() and not body[-1].isspace() and not _SPACE_AT_NEWLINE.search(body)


def joinable(line: str) -> bool:
    """A line whose ids, encoded alone, are its ids inside any head + lines + tail text."""
    return "\n" not in line and _clean_lines(line)


class LineSpans:
    """One encoded head + lines + tail text: where each line starts and ends in its ids."""

    def __init__(self, ids: list[int], starts: list[int], ends: list[int], nl_id: int):
        self.ids, self.nl_id = ids, nl_id
        self.starts, self.ends = starts, ends  # line j is ids[starts[j]:ends[j]], without its newline
        self.n = len(starts)
        self.head = starts[0]  # ids[:head]: the head, ending with its newlines
        self.tail_start = ends[-1]  # ids[tail_start:]: the tail (empty for a document)

    @classmethod
    def of(cls, text: str, ids: list[int], head: str, tail: str, nl_id: Optional[int],
           n_lines: Optional[int] = None) -> Optional["LineSpans"]:
        """The spans of `text` = head + lines + tail with its ids `ids`, or None where cutting does not
        hold (see the module doc) or the text has other than `n_lines` lines."""
        if nl_id is None or not head.endswith("\n") or (tail and not tail.startswith("\n")):
            return None
        if not text.startswith(head) or not text.endswith(tail) or len(text) <= len(head) + len(tail):
            return None
        body = text[len(head): len(text) - len(tail)]
        n = body.count("\n") + 1
        if (n_lines is not None and n != n_lines) or not _clean_lines(body):
            return None
        newlines = text.count("\n")
        if ids.count(nl_id) != newlines:  # some newline shares a token (e.g. "\n\n" merged)
            return None
        at, i = [], -1  # token position of each newline, in text order
        for _ in range(newlines):
            i = ids.index(nl_id, i + 1)
            at.append(i)
        h = head.count("\n")  # line j follows newline h - 1 + j and ends at newline h + j (or the ids' end)
        starts = [p + 1 for p in at[h - 1: h - 1 + n]]
        ends = at[h: h + n - 1] + [at[h + n - 1] if tail else len(ids)]
        return cls(ids, starts, ends, nl_id)

    def line_tokens(self) -> list[int]:
        """Each line's tokens + 1 (its newline): the per-line estimate of data.chunking.Chunker, which
        would otherwise encode every line alone to get it."""
        return [e - s + 1 for s, e in zip(self.starts, self.ends)]

    def length(self, a: int, b: int, last: int = 0) -> int:
        """len(join(a, b, last=<ids of length last>)): head + lines [a, b) (+ one more line) + tail."""
        _at_least_one_line(a, b, last)
        n = self.head + len(self.ids) - self.tail_start
        if b > a:
            n += self.ends[b - 1] - self.starts[a] + (1 if last else 0)
        return n + last

    def join(self, a: int, b: int, last: Optional[list[int]] = None) -> list[int]:
        """ids of head + lines [a, b) + tail; `last`: the ids of one more line (encoded alone, see
        `joinable`) after line b - 1."""
        _at_least_one_line(a, b, last)
        ids = self.ids[: self.head]
        if b > a:
            ids += self.ids[self.starts[a]: self.ends[b - 1]]
        if last is not None:
            if b > a:
                ids.append(self.nl_id)
            ids += last
        return ids + self.ids[self.tail_start:]


def _at_least_one_line(a: int, b: int, last) -> None:
    if b <= a and not last:  # head and tail would meet: their whitespace runs join into other tokens
        raise ValueError(f"lines [{a}, {b}) and no last line: a text without lines is encoded, not cut")
