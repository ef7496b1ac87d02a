"""Result files and the markdown summary of a benchmark run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ncjax.bench.registry import fmt


def write_atomic(path: str | Path, text: str) -> None:
    """Writes text to path through a temp file in the same directory and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic, indented, strict JSON (NaN is an error, never silently written)."""
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(benchmark, subset, metrics) rows for the summary table, in registry order."""
    from ncjax.bench.registry import registry

    return [row for b in registry().values() for row in b.rows(results)]


def markdown(results: dict[str, Any]) -> str:
    """A markdown table of the headline numbers of a results dict from `ncjax.bench.evaluate`."""
    lines = [
        f"Model `{results.get('model', '?')}`, backend `{results.get('backend', '?')}`, "
        f"{fmt(results.get('seconds', {}).get('total'), 1)} s",
        "",
        "| benchmark | subset | scores |",
        "|---|---|---|",
    ]
    lines += [f"| {b} | {s} | {m} |" for b, s, m in rows(results)]
    return "\n".join(lines) + "\n"
