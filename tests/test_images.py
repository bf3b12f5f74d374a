from __future__ import annotations

import io

import pytest
from PIL import Image

from schemas import Reason
from transforms.images import ImageLimits, ImageRejected, normalize_image


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def reason_of(data: bytes, limits: ImageLimits = ImageLimits()) -> Reason:
    with pytest.raises(ImageRejected) as caught:
        normalize_image(data, limits)
    return caught.value.reason


def test_rejections_have_reasons():
    assert reason_of(b"") is Reason.EMPTY_IMAGE
    assert reason_of(b"GIF89a not really") is Reason.UNDECODABLE_IMAGE
    assert reason_of(encoded(Image.new("RGB", (40, 200)))) is Reason.IMAGE_TOO_SMALL
    assert reason_of(encoded(Image.new("RGB", (2000, 100)))) is Reason.BAD_ASPECT_RATIO
    assert reason_of(encoded(Image.new("L", (300, 300))), ImageLimits(max_pixels=50_000)) is Reason.IMAGE_TOO_LARGE
    truncated = encoded(Image.effect_noise((300, 300), 40), "JPEG")[:600]
    assert reason_of(truncated) is Reason.UNDECODABLE_IMAGE


def test_normalizes_mode_size_and_orientation():
    rgba = Image.new("RGBA", (2400, 1200), (255, 0, 0, 0))  # fully transparent: composited on white
    result = normalize_image(encoded(rgba), ImageLimits(max_side=1024))
    image = Image.open(io.BytesIO(result.data))
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (1024, 512)
    assert (result.original_width, result.original_height) == (2400, 1200)
    assert min(image.getpixel((500, 250))) > 240

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 300x200, displayed 200x300
    rotated = normalize_image(encoded(Image.new("RGB", (300, 200)), "JPEG", exif=exif), ImageLimits())
    assert (rotated.width, rotated.height) == (200, 300) == (rotated.original_width, rotated.original_height)


def test_sixteen_bit_grayscale_is_scaled_and_png_output_is_deterministic():
    import numpy as np

    array = (np.arange(256 * 256, dtype=np.uint16).reshape(256, 256) * 16)
    data = encoded(Image.fromarray(array))  # uint16 -> mode I;16
    limits = ImageLimits(image_format="png")
    first, second = normalize_image(data, limits), normalize_image(data, limits)
    assert first.data == second.data
    pixels = Image.open(io.BytesIO(first.data)).convert("L")
    assert pixels.getextrema() == (0, 255)
