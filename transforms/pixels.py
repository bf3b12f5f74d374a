"""Any Pillow image as 8-bit pixels (pure): shared by the image stage (RGB) and the hashes (luma)."""
from __future__ import annotations

import numpy as np
from PIL import Image

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # medical 16-bit / float
_ALPHA_MODES = ("RGBA", "LA", "PA")


def to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode` ("RGB" or "L"): 16-bit / float scaled to its own range, transparency on white."""
    if image.mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert(mode)
    return image.convert(mode)


def background_level(pixels: np.ndarray) -> float:
    """The median of a 2-D image's outermost ring of pixels: its margin or background gray level."""
    return float(np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])))
