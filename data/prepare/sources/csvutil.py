"""Shared helpers for the comma/semicolon-separated sources: rows with line numbers, bad rows counted."""
import csv
from typing import Iterator, Optional

from data.prepare.records import BadLines, DataError, open_text


def rows(path, bad: BadLines, header: Optional[list[str]] = None, encoding: str = "utf-8", delimiter: str = ",",
         escapechar: Optional[str] = None) -> Iterator[tuple[int, dict | list]]:
    """(line number, row) pairs; with `header`, the file's header must start with those names and rows
    are dicts. A decoding error is reported on its line and ends the file (the decoder cannot resync)."""
    with open_text(path, encoding) as f:
        reader = csv.reader(f, delimiter=delimiter, escapechar=escapechar)
        names = None
        try:
            if header is not None:
                names = next(reader, None)
                if names is None:
                    return
                names = [n.strip() for n in names]
                if names[: len(header)] != header:
                    raise DataError(f"{path}:1: unexpected header {names[:len(header)]}, expected {header}")
            for row in reader:
                if names is not None:
                    if len(row) != len(names):
                        bad.bad(path, reader.line_num, "wrong_field_count", f"{len(row)} fields, expected {len(names)}")
                        continue
                    yield reader.line_num, dict(zip(names, row))
                else:
                    yield reader.line_num, row
        except UnicodeDecodeError as e:
            bad.bad(path, reader.line_num + 1, "bad_encoding", str(e))
