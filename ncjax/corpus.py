"""Reading a local corpus file: the one set of rules for training (`ncjax.data`) and NC
measurement (`ncjax.measure`).

`read_rows(path, fmt, field)` returns the text of every row, in file order:

- `text` / `wikitext`: every line (blank lines included; callers drop or use them).
- `tsv`: tab-separated, first line the header; quoting is off, so a quote is an ordinary
  character and a row is always exactly one line (the bundled GAP files are read this way, as the
  reference code reads them). `field` is a header name, or a 0-based column index for a file
  without a header (then every line is a row).
- `csv`: comma-separated with standard quoting, first line the header; a quoted field that runs
  over a line end is an error naming the line where it starts (a stray quote would otherwise merge
  the following rows into one text).
- `jsonl`: one JSON object per line (blank lines skipped), `field` of each.

Every error is one ValueError naming the file and line (or column); bytes that are not UTF-8
are named the same way (`ncjax.files.read_text`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ncjax import files

LOCAL_FORMATS = ("tsv", "csv", "jsonl", "text", "wikitext")
SUFFIXES = {"tsv": "tsv", "csv": "csv", "jsonl": "jsonl", "json": "jsonl", "txt": "text", "text": "text",
            "tokens": "wikitext", "raw": "text"}


def format_of(path: str | os.PathLike) -> str | None:
    """The format a file's suffix names (.tsv, .csv, .jsonl/.json, .txt/.text/.raw, .tokens), or None."""
    return SUFFIXES.get(Path(path).suffix.lower().lstrip("."))


def _column(path: Path, header: list[str], field: str | tuple[str, ...]) -> int:
    for name in (field,) if isinstance(field, str) else field:
        if name in header:
            return header.index(name)
    raise ValueError(f"{path} has no column {field!r} (header: {', '.join(header)}); name one of these columns.")


def _table(path: Path, text: str, fmt: str, field: str | int | tuple[str, ...]) -> list[str]:
    if fmt == "tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    headerless = isinstance(field, int)
    out, idx, line = [], field if headerless else None, 0
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if line > start:
                raise ValueError(f"{path}:{start}: a quoted field runs over {line - start + 1} lines (to line {line}); "
                                 "remove the stray quote or put the text on one line.")
            if idx is None:
                idx = _column(path, row, field)
                continue
            if not row:  # a blank line
                continue
            if idx >= len(row):
                raise ValueError(f"{path}:{start}: the row has {len(row)} fields, fewer than column {field!r} needs.")
            out.append(row[idx])
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: {e}; fix the line.") from None
    if idx is None:
        raise ValueError(f"{path} is empty; a {fmt} corpus needs a header line with a {field!r} column.")
    return out


def _jsonl(path: Path, text: str, field: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); fix the line.") from None
        if not isinstance(obj, dict) or field not in obj:
            raise ValueError(f"{path}:{n}: the object has no field {field!r}; name the text field.")
        value = obj[field]
        if not isinstance(value, str):
            raise ValueError(f"{path}:{n}: field {field!r} is a {type(value).__name__}, not text.")
        out.append(value)
    return out


def read_rows(path: str | os.PathLike, fmt: str, field: str | int | tuple[str, ...] = "text") -> list[str]:
    """The text of every row of a local corpus file (see the module docstring for the rules).

    fmt: one of LOCAL_FORMATS; field: the column (tsv/csv: header name, a tuple of names of which
    the first present is used, or a 0-based index for a headerless file) or object key (jsonl);
    ignored for text and wikitext."""
    path = Path(path)
    if fmt not in LOCAL_FORMATS:
        raise ValueError(f"corpus format {fmt!r} is not one of {', '.join(LOCAL_FORMATS)}.")
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path} does not exist; give a text, .tsv, .csv or .jsonl file.")
    text = files.read_text(path)
    if fmt in ("text", "wikitext"):
        return text.splitlines()
    if fmt == "jsonl":
        return _jsonl(path, text, str(field))
    return _table(path, text, fmt, field)
