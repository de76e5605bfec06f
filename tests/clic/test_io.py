"""clic.io: images and masks in the forms users have them, and the non-square round trip."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clic.io import (
    InputError,
    Placement,
    from_model_output,
    load_image,
    load_mask,
    mask_from_model_output,
    probe_image,
    save_image,
    save_mask_png,
    to_model_input,
)


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale for (H, W), RGB for (H, W, 3)) written by hand: PIL cannot write 16-bit RGB."""
    height, width = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def disc(width: int, height: int, radius_fraction: float = 0.3) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    radius = radius_fraction * min(width, height)
    return (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < radius**2


def gradient_image(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), np.full_like(xx, 90)], -1).astype(
        np.uint8
    )


def one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --------------------------------------------------------------------------------------------- images


def test_rgba_1024_source_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((1024, 1024, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, opacity decides what shows
    rgba[:512, :, 3] = 255  # top: opaque
    rgba[512:, :512, 3] = 0  # bottom-left: transparent -> white
    rgba[512:, 512:, 3] = 128  # bottom-right: half -> halfway to white
    path = tmp_path / "source.png"
    Image.fromarray(rgba).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (1024, 1024)
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == (200, 0, 0)
    assert tuple(pixels[1000, 0]) == (255, 255, 255)
    assert np.allclose(pixels[1000, 1000], (227, 127, 127), atol=2)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P-transparent", "1"])
def test_other_modes_load_as_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(gradient_image(40, 30))
    if mode == "LA":
        image = base.convert("LA")
    elif mode == "P":
        image = base.convert("P")
    elif mode == "P-transparent":
        image = base.convert("P")
        image.info["transparency"] = 0
    else:
        image = base.convert(mode)
    path = tmp_path / f"{mode}.png"
    image.save(path, **({"transparency": 0} if mode == "P-transparent" else {}))
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (40, 30)


def test_16bit_grayscale_and_rgb_pngs_scale_to_8bit(tmp_path: Path) -> None:
    gray = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    (tmp_path / "gray16.png").write_bytes(png16(gray))
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    assert np.asarray(load_image(tmp_path / "gray16.png"))[0, :, 0].tolist() == [0, 128, 255]

    colour = np.zeros((2, 2, 3), np.uint16)
    colour[..., 0], colour[..., 1], colour[..., 2] = 65535, 257 * 128, 257
    (tmp_path / "rgb16.png").write_bytes(png16(colour))
    assert tuple(np.asarray(load_image(tmp_path / "rgb16.png"))[0, 0]) == (255, 128, 1)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "phone.jpg"
    Image.fromarray(gradient_image(60, 40)).save(path, exif=exif)
    assert load_image(path).size == (40, 60)
    assert probe_image(path) == (40, 60)


def test_missing_corrupt_and_truncated_images_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match="file not found") as err:
        load_image(missing)
    one_line(err, missing)

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image at all")
    with pytest.raises(InputError, match="not a readable image") as err:
        load_image(corrupt)
    one_line(err, corrupt)

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buffer, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated") as err:
        load_image(truncated)
    one_line(err, truncated)
    with pytest.raises(InputError, match="truncated"):
        probe_image(truncated)


def test_probe_finds_a_truncated_jpeg(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated"):
        probe_image(path)


# ---------------------------------------------------------------------------------------------- masks


def write_mask_variants(tmp_path: Path, region: np.ndarray) -> dict[str, Path]:
    """The same region saved the ways editors and scripts save masks."""
    height, width = region.shape
    paths = {}
    gray = region.astype(np.uint8) * 255
    paths["L"] = tmp_path / "mask_L.png"
    Image.fromarray(gray).save(paths["L"])
    paths["1"] = tmp_path / "mask_1.png"
    Image.fromarray(gray).convert("1").save(paths["1"])
    paths["RGB"] = tmp_path / "mask_rgb.png"
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[region] = (255, 0, 0)  # a red region: "any channel" counts it
    Image.fromarray(rgb).save(paths["RGB"])
    paths["RGBA-alpha"] = tmp_path / "mask_rgba_alpha.png"
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = 255  # constant colour, the shape is in alpha
    rgba[..., 3] = gray
    Image.fromarray(rgba).save(paths["RGBA-alpha"])
    paths["RGBA-colour"] = tmp_path / "mask_rgba_colour.png"
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = gray[..., None]
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(paths["RGBA-colour"])
    paths["P"] = tmp_path / "mask_p.png"
    palette = Image.frombytes("P", (width, height), region.astype(np.uint8).tobytes())  # indices 0/1
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    palette.save(paths["P"])
    paths["P-transparency"] = tmp_path / "mask_p_transparent.png"
    palette.putpalette([255, 255, 255] * 256)  # same colour everywhere, index 0 transparent
    palette.save(paths["P-transparency"], transparency=0)
    paths["I16"] = tmp_path / "mask_16.png"
    paths["I16"].write_bytes(png16(region.astype(np.uint16) * 65535))
    return paths


def test_mask_modes_give_the_same_boolean_mask(tmp_path: Path) -> None:
    region = disc(96, 64)
    for kind, path in write_mask_variants(tmp_path, region).items():
        mask = load_mask(path)
        assert mask.dtype == bool and mask.shape == (64, 96), kind
        assert np.array_equal(mask, region), kind


def test_rgb_mask_for_a_1080_target(tmp_path: Path) -> None:
    target = tmp_path / "target.jpg"
    Image.fromarray(gradient_image(1080, 1080)).save(target, quality=90)
    region = disc(1080, 1080, 0.2)
    rgb = np.zeros((1080, 1080, 3), np.uint8)
    rgb[region] = (0, 255, 0)
    mask_path = tmp_path / "target_mask.png"
    Image.fromarray(rgb).save(mask_path)
    image = load_image(target)
    mask = load_mask(mask_path, size=image.size)
    assert np.array_equal(mask, region)


def test_soft_mask_is_thresholded_at_half(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    path = tmp_path / "soft.png"
    Image.fromarray(ramp).save(path)
    mask = load_mask(path)
    assert not mask[:, :128].any() and mask[:, 128:].all()


def test_empty_mask_is_an_error_and_full_mask_is_the_whole_image(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(empty)
    with pytest.raises(InputError, match="mask is empty.*100 of 255") as err:
        load_mask(empty)
    one_line(err, empty)

    full = tmp_path / "full.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(full)
    assert load_mask(full).all()


def test_mask_of_another_size_is_resized_and_another_aspect_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    Image.fromarray(disc(200, 100).astype(np.uint8) * 255).save(path)
    resized = load_mask(path, size=(400, 200))
    assert resized.shape == (200, 400)
    assert abs(resized.mean() - disc(400, 200).mean()) < 0.01
    with pytest.raises(InputError, match="200x100.*300x300") as err:
        load_mask(path, size=(300, 300))
    one_line(err, path)


def test_mask_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_mask(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(InputError) as err:
        load_mask(broken)
    one_line(err, broken)


# ------------------------------------------------------------------------------------------ model I/O


def test_to_model_input_shapes_ranges_and_padding() -> None:
    image = Image.fromarray(gradient_image(300, 100))
    mask = np.zeros((100, 300), bool)
    mask[40:60, 100:200] = True
    image_tensor, mask_tensor, placement = to_model_input(image, mask, 64)
    assert image_tensor.shape == (3, 64, 64) and image_tensor.dtype == torch.float32
    assert -1.0 <= image_tensor.min() and image_tensor.max() <= 1.0
    assert mask_tensor.shape == (1, 64, 64) and set(mask_tensor.unique().tolist()) <= {0.0, 1.0}
    assert placement == Placement((300, 100), 300, (0, 100, 300, 200), 64)
    assert torch.allclose(image_tensor[:, :5], torch.ones(3, 5, 64))  # top padding is white
    assert mask_tensor[0, :20].sum() == 0 and mask_tensor.sum() > 0
    assert to_model_input(image, None, 32)[1] is None


def test_1920x1080_round_trip_keeps_size_and_content() -> None:
    yy, xx = np.mgrid[:1080, :1920]
    smooth = np.stack([128 + 100 * np.sin(xx / 150), 128 + 100 * np.cos(yy / 120), (xx + yy) * 255 // 3000], -1)
    image = Image.fromarray(smooth.astype(np.uint8))
    region = disc(1920, 1080, 0.3)
    image_tensor, mask_tensor, placement = to_model_input(image, region, 256)

    back = from_model_output((image_tensor + 1) / 2, placement)
    assert back.size == (1920, 1080)
    error = np.abs(np.asarray(back, np.float32) - np.asarray(image, np.float32)).mean()
    assert error < 3.0, error

    mask_back = mask_from_model_output(mask_tensor, placement)
    assert mask_back.shape == (1080, 1920) and mask_back.dtype == bool
    iou = (mask_back & region).sum() / (mask_back | region).sum()
    assert iou > 0.97, iou

    # The same output as a float HWC array (the metrics' form) gives the same image.
    array = ((image_tensor + 1) / 2).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(from_model_output(array, placement)), np.asarray(back))


def test_from_model_output_refuses_minus_one_to_one_tensors() -> None:
    placement = Placement.for_size((64, 32), 32)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        from_model_output(torch.full((3, 32, 32), -0.5), placement)


def test_save_mask_png_and_save_image_round_trip(tmp_path: Path) -> None:
    region = disc(50, 40)
    path = save_mask_png(region, tmp_path / "out" / "mask.png")
    saved = Image.open(path)
    assert saved.mode == "L" and set(np.unique(np.asarray(saved)).tolist()) == {0, 255}
    assert np.array_equal(load_mask(path), region)

    pixels = gradient_image(50, 40)
    image_path = save_image(pixels.astype(np.float32) / 255, tmp_path / "out" / "image.png")
    assert np.array_equal(np.asarray(load_image(image_path)), pixels)
    assert save_image(Image.fromarray(pixels), tmp_path / "copy.jpg").exists()
