"""Contact sheet of a manifest: per pair the source and the target with their masks outlined, and the
expected image where the manifest has one, under a label with the pair id and concept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

PANEL = 128  # side of each thumbnail in pixels
GAP = 4
LABEL_HEIGHT = 16
HEADER_HEIGHT = 18
FONT_SIZE = 12
PAIRS_PER_ROW = 2
OUTLINE_RGB = np.array([255, 0, 200], dtype=np.uint8)  # magenta: visible on the pastel backgrounds
SHEET_RGB = (255, 255, 255)
EMPTY_RGB = (225, 225, 225)
TEXT_RGB = (20, 20, 20)
COLUMNS = ("source + mask", "target + mask", "expected")


def _thumbnail(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    return image if image.size == (PANEL, PANEL) else image.resize((PANEL, PANEL), Image.Resampling.LANCZOS)


def _outlined(image: Image.Image, mask_path: Path | None) -> Image.Image:
    """The image with the mask's boundary (its pixels with a 4-neighbour outside it) painted on top."""
    if mask_path is None:
        return image
    mask = np.asarray(Image.open(mask_path).convert("L").resize((PANEL, PANEL), Image.Resampling.NEAREST)) > 127
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels = np.asarray(image).copy()
    pixels[mask & ~interior] = OUTLINE_RGB
    return Image.fromarray(pixels, mode="RGB")


def _resolve(root: Path, value: str | None) -> Path | None:
    return None if value is None else root / value


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """The text, shortened with an ellipsis until it fits in ``width`` pixels."""
    while text and font.getlength(text) > width:
        text = text[:-2] + "…"
    return text


def _pair_tile(row: dict[str, Any], root: Path, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> Image.Image:
    width = len(COLUMNS) * PANEL + (len(COLUMNS) - 1) * GAP
    tile = Image.new("RGB", (width, LABEL_HEIGHT + PANEL), SHEET_RGB)
    label = row["pair_id"] + (f": {row['concept']}" if row.get("concept") else "")
    if row.get("target_part"):
        label += f" -> {row['target_object']} {row['target_part']}"
    ImageDraw.Draw(tile).text((0, 1), _fit(label, font, width), fill=TEXT_RGB, font=font)

    target_mask = row.get("target_mask") or row.get("target_mask_gt")
    expected = _resolve(root, row.get("expected_image"))
    panels = (
        _outlined(_thumbnail(root / row["source_image"]), _resolve(root, row.get("source_mask"))),
        _outlined(_thumbnail(root / row["target_image"]), _resolve(root, target_mask)),
        _thumbnail(expected) if expected is not None else Image.new("RGB", (PANEL, PANEL), EMPTY_RGB),
    )
    for column, panel in enumerate(panels):
        tile.paste(panel, (column * (PANEL + GAP), LABEL_HEIGHT))
    return tile


def contact_sheet(manifest: Path, rows: list[dict[str, Any]] | None = None) -> Image.Image:
    """Draw the contact sheet of a manifest (paths in it are relative to its folder); ``rows``: only these
    (e.g. the rows that passed validation), as read from the manifest."""
    manifest = Path(manifest)
    rows = pq.read_table(manifest).to_pylist() if rows is None else rows
    font = ImageFont.load_default(size=FONT_SIZE)
    tiles = [_pair_tile(row, manifest.parent, font) for row in rows]
    tile_w, tile_h = tiles[0].size if tiles else (len(COLUMNS) * PANEL, PANEL)
    columns = min(PAIRS_PER_ROW, max(len(tiles), 1))
    grid_rows = -(-len(tiles) // columns)
    sheet = Image.new(
        "RGB", (columns * (tile_w + 3 * GAP) + GAP, HEADER_HEIGHT + grid_rows * (tile_h + 2 * GAP) + GAP), SHEET_RGB
    )
    draw = ImageDraw.Draw(sheet)
    for column in range(columns):
        for index, title in enumerate(COLUMNS):
            draw.text((GAP + column * (tile_w + 3 * GAP) + index * (PANEL + GAP), 2), title, fill=TEXT_RGB, font=font)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        sheet.paste(tile, (GAP + column * (tile_w + 3 * GAP), HEADER_HEIGHT + row * (tile_h + 2 * GAP)))
    return sheet
