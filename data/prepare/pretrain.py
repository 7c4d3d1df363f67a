"""Stage 3a: the pre-training documents (App. B.1) of a bucket's users, as a stream of token ids.

A document is one user's history (header, blank line, one line per item). A history of `max_seq_len`
tokens or more is cut into the fewest near-equal chunks that fit (data/prepare/chunking.py, recgpt.md §6),
each a document. The stream is the documents' ids, each followed by EOS; the merge cuts the streams of all
buckets into fixed rows (data/prepare/merge.py).
"""
import array
import collections
import pathlib

import numpy as np

from data.prepare import templates
from data.prepare.chunking import Chunker
from data.prepare.encoder import Encoder
from data.prepare.manifests import ManifestWriter


class DocumentStream:
    """Documents' ids, each followed by EOS, appended to one raw little-endian file."""

    def __init__(self, path: pathlib.Path, dtype: str, eos_id: int):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._file = open(path, "wb")
        self._eos = np.full(1, eos_id, dtype=self.dtype)
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, ids) -> None:
        """One document's ids (a sequence of ints, or an array('I'))."""
        ids = np.frombuffer(ids, dtype=np.uint32) if isinstance(ids, array.array) else np.asarray(ids)
        self._pending += [ids.astype(self.dtype), self._eos]
        self._pending_tokens += len(ids) + 1
        if self._pending_tokens >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            np.concatenate(self._pending).tofile(self._file)
        self._pending, self._pending_tokens = [], 0

    def close(self) -> None:
        self._flush()
        self._file.close()


def write_documents(d: templates.Domain, users: list, enc: Encoder, chunker: Chunker, stream: DocumentStream,
                    manifest: ManifestWriter | None, counts: collections.Counter) -> None:
    """The documents of `users` (histories, in order), chunked where too long."""
    limit = chunker.limit
    overhead = enc.counts([templates.document_head(d)])[0]
    lines: dict[tuple, str] = {}  # what a line shows -> the line: items rated alike by many users, a long
    # history's chunks and every chunking tried reuse it

    def line(x) -> str:
        key = (x.item.id, x.rating, x.review)
        hit = lines.get(key)
        if hit is None:
            hit = lines[key] = templates.pretrain_line(d, x)
        return hit

    def render(groups):
        """Each group's document, as the list of its lines (the encoder takes a text so). The chunker's groups are
        runs of a history's interactions, whose lines are looked up by identity (in C); an item whose review the
        chunker cut is a new interaction, rendered anew."""
        out = []
        for g in groups:
            try:
                out.append(templates.document_lines(d, map(by_id.__getitem__, map(id, g))))
            except KeyError:
                out.append(templates.document_lines(d, map(line, g)))
        return out

    by_id = {id(x): line(x) for h in users for x in h}
    docs = render(users)
    out = []  # (chunk, its document), in order
    for history, doc, n in zip(users, docs, enc.counts(docs)):
        if n < limit:
            out.append((history, doc))
        else:
            groups = chunker.split(history, line, overhead, lambda gs: enc.counts(render(gs)))
            out += zip(groups, render(groups))
    for (g, _), ids in zip(out, enc.ids([doc for _, doc in out])):
        stream.add(ids)
        counts["documents"] += 1
        counts["tokens"] += len(ids) + 1  # + EOS
        counts["interactions_in_documents"] += len(g)
        if manifest:
            manifest.add("pretrain", g)
    counts["pretrain_users"] += len(users)
