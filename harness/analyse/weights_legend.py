"""Short weights labels for the report's tables, with the full provenance in one place.

A table's ``weights`` column names the diffusion weights and the metric weights behind every number
("tiny-random + tiny-random", or a model id with its hash). Written out in every row it dominates a table, so
the page shows a short key (W1, W2, …) and one legend, in the provenance section, that spells each key out.
The CSV and Markdown tables keep the full text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

import pandas as pd

from harness.analyse.aggregate import weights_description


def weights_keys(results: pd.DataFrame) -> dict[str, str]:
    """Full weights description → its short key, "W1", "W2", … in sorted order of the descriptions."""
    if results.empty:
        return {}
    described = sorted(set(weights_description(results).dropna().astype(str)))
    return {text: f"W{i}" for i, text in enumerate(described, start=1)}


def shorten(text: object, keys: Mapping[str, str]) -> str:
    """A weights cell ("a + b, c + d") with each description replaced by its key ("W1, W2")."""
    value = str(text) if isinstance(text, str) else ""
    for full in sorted(keys, key=len, reverse=True):  # longest first: no description is cut by a shorter one
        value = value.replace(full, keys[full])
    return value


def with_short_weights(table: pd.DataFrame, keys: Mapping[str, str]) -> pd.DataFrame:
    """`table` with its weights column in short keys (unchanged without one)."""
    if "weights" not in table.columns or not keys:
        return table
    return table.assign(weights=[shorten(text, keys) for text in table["weights"]])


def legend_html(keys: Mapping[str, str], anchor: str = "weights") -> str:
    """The one place the keys are spelled out: key, diffusion weights + metric weights."""
    if not keys:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(full)}</td></tr>"
        for full, key in sorted(keys.items(), key=lambda item: int(item[1][1:]))
    )
    return (
        f'<h3 id="{anchor}">Weights</h3><p>The <code>weights</code> column of every table names these keys: '
        f"the diffusion model's weights + the metric's weights that made the numbers.</p>"
        f'<table class="results"><tr><th>key</th><th>diffusion weights + metric weights</th></tr>{rows}</table>'
    )


def keys_text(keys: Mapping[str, str]) -> Iterable[str]:
    return (f"{key} = {full}" for full, key in keys.items())
