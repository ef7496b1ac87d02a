"""Result files and the markdown summary of a benchmark run."""

from __future__ import annotations

from typing import Any

from ncjax import files
from ncjax.bench.registry import fmt


# The one atomic writer (strict JSON: a NaN score becomes null), under the name this package exports.
write_json = files.write_json


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
