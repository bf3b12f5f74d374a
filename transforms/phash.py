"""Perceptual hashes of figures: imagehash's 64-bit pHash, computed fast, plus crop-robust companions.

The pHash follows `imagehash.phash` (grayscale, 32x32 Lanczos thumbnail, 2-D DCT-II, 8x8 low band,
bit = coefficient > median, hex with the band's first coefficient as the most significant bit), so
the hex we print and store is the hex users get from imagehash for the same picture. Two things make
it fast: JPEGs are decoded at reduced scale in luma only (Pillow `draft`: the decoder drops DCT
coefficients instead of decoding full size), other formats are reduced by integer box averaging
before the Lanczos step, and the DCT is two small matrix products restricted to the low band.

A plain pHash does not survive re-crops or a pasted panel letter (docs/dedup.md has the numbers), so
an image also gets companion hashes, same definition, of: the image with uniform borders trimmed, a
centred inner window and four corner windows. A copy cropped by a few percent lines up with one of
the original's windows; near dedup matches two images when any hash of one is close to any of the
other's.
"""
from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

HASH_BITS = 64
HEX_DIGITS = HASH_BITS // 4
_BAND = 8  # imagehash hash_size
_THUMB = 32  # hash_size * highfreq_factor (4)
# Decode at reduced scale to at least this short side: enough for the windows below to be cut within
# half a percent, far below the full-size decode imagehash pays for.
WORK_SIDE = 256

# Rows of the DCT-II basis (scipy's unnormalized type II up to a constant factor, which the median
# comparison ignores) for the low band only: low = B @ pixels @ B.T.
_BASIS = np.cos(np.pi * np.arange(_BAND)[:, None] * (2 * np.arange(_THUMB)[None, :] + 1) / (2 * _THUMB))
# Coefficients are rounded before the median comparison so that values equal in exact arithmetic
# (symmetric or blank images) compare equal on every CPU and BLAS: the hash is a stored output.
_DCT_DECIMALS = 6

# A border is uniform when this share of its pixels lies within this many gray levels of the
# outermost ring's median (JPEG ringing and scanner noise stay under it).
_BORDER_TOLERANCE = 12
_BORDER_SHARE = 0.995
_MIN_CONTENT_SHARE = 0.1  # never trim an image down to less than this share of a side


@dataclasses.dataclass(frozen=True)
class Window:
    """A region of the (trimmed) image, as the fractions cut away from each side."""

    name: str
    left: float
    top: float
    right: float
    bottom: float

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (
            round(width * self.left),
            round(height * self.top),
            width - round(width * self.right),
            height - round(height * self.bottom),
        )


_CORNER_CUT = 0.04
_CENTRE_CUT = 0.035
WINDOWS = (
    Window("centre", _CENTRE_CUT, _CENTRE_CUT, _CENTRE_CUT, _CENTRE_CUT),
    Window("top-left", 0.0, 0.0, _CORNER_CUT, _CORNER_CUT),
    Window("top-right", _CORNER_CUT, 0.0, 0.0, _CORNER_CUT),
    Window("bottom-left", 0.0, _CORNER_CUT, _CORNER_CUT, 0.0),
    Window("bottom-right", _CORNER_CUT, _CORNER_CUT, 0.0, 0.0),
)


@dataclasses.dataclass(frozen=True)
class PerceptualHashes:
    phash: int  # imagehash's pHash of the whole image
    companions: tuple[int, ...]  # trimmed whole image and windows, duplicates of `phash` removed

    @property
    def all(self) -> tuple[int, ...]:
        return (self.phash, *self.companions)


def to_hex(value: int) -> str:
    return f"{value:0{HEX_DIGITS}x}"


def from_hex(text: str) -> int:
    """A 16-hex pHash (imagehash's bit order) -> int; ValueError when it is not one."""
    if len(text) != HEX_DIGITS:
        raise ValueError(f"expected {HEX_DIGITS} hex digits, got {text!r}")
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def phash_of_gray(gray: Image.Image) -> int:
    """imagehash.phash of an 8-bit grayscale image."""
    thumb = gray.resize((_THUMB, _THUMB), Image.Resampling.LANCZOS)
    low = np.round(_BASIS @ np.asarray(thumb, dtype=np.float64) @ _BASIS.T, _DCT_DECIMALS)
    bits = (low > np.median(low)).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _to_gray(image: Image.Image) -> Image.Image:
    """8-bit luma of any Pillow mode: 16-bit / float scaled to its range, transparency on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("L")
    return image.convert("L")


def decode_gray(data: bytes, work_side: int = WORK_SIDE) -> Image.Image:
    """The image as displayed (EXIF orientation applied), in luma, reduced to about `work_side`.

    Raises what Pillow raises on undecodable bytes: callers at the edge turn that into a reason.
    """
    image = Image.open(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.draft("L", (work_side, work_side))  # JPEG: reduced-scale luma decode; others: no-op
        gray = _to_gray(ImageOps.exif_transpose(image))
    factor = min(gray.size) // work_side
    return gray.reduce(factor) if factor >= 2 else gray


def trim_uniform_border(gray: Image.Image) -> Image.Image:
    """The image without the uniform margin around it (white page, black scanner background)."""
    pixels = np.asarray(gray, dtype=np.int16)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    near = np.abs(pixels - np.median(ring)) <= _BORDER_TOLERANCE
    rows = np.flatnonzero(near.mean(axis=1) < _BORDER_SHARE)
    cols = np.flatnonzero(near.mean(axis=0) < _BORDER_SHARE)
    if rows.size == 0 or cols.size == 0:
        return gray  # blank: nothing but border
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    height, width = pixels.shape
    if bottom - top < _MIN_CONTENT_SHARE * height or right - left < _MIN_CONTENT_SHARE * width:
        return gray
    return gray.crop((int(left), int(top), int(right), int(bottom)))


def hashes_of_gray(gray: Image.Image) -> PerceptualHashes:
    whole = phash_of_gray(gray)
    trimmed = trim_uniform_border(gray)
    companions = [phash_of_gray(trimmed)]
    companions += [phash_of_gray(trimmed.crop(window.box(*trimmed.size))) for window in WINDOWS]
    return PerceptualHashes(whole, tuple(dict.fromkeys(h for h in companions if h != whole)))


def perceptual_hashes(data: bytes) -> PerceptualHashes:
    """Every hash near dedup uses for one encoded image (JPEG, PNG, GIF, TIFF, ...)."""
    return hashes_of_gray(decode_gray(data))


def phash(data: bytes) -> int:
    """imagehash.phash of one encoded image, decoded at reduced scale."""
    return phash_of_gray(decode_gray(data))
