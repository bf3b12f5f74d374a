"""Perceptual hashes of figures: imagehash's 64-bit pHash, computed fast, plus crop-robust companions.

The pHash follows `imagehash.phash` (grayscale, 32x32 Lanczos thumbnail, 2-D DCT-II, 8x8 low band,
bit = coefficient > median, hex with the band's first coefficient as the most significant bit), so
the hex we print and store is the hex users get from imagehash for the same picture. Two things make
it fast: JPEGs are decoded at reduced scale in luma only (Pillow `draft`: the decoder drops DCT
coefficients instead of decoding full size), other formats are reduced by integer box averaging
before the Lanczos step, and the DCT is two small matrix products restricted to the low band.

A plain pHash does not survive re-crops or a pasted panel letter (docs/dedup.md has the numbers), so
an image also gets companion hashes, same definition, of: the image with uniform borders trimmed, a
centred inner window and four corner windows of it, and two bands of the whole image that leave out
its top or bottom strip (where panel letters sit). A copy cropped by a few percent lines up with one
of the original's windows; near dedup matches two images when any hash of one is close to any of
the other's.

Every hash comes with a *layout* hash of the same region: the same median rule applied to each
quarter of the thumbnail on its own (4x4 low band per quarter, 64 bits). It says where the
low-frequency structure sits, which a whole-region pHash blurs: two-panel figures sharing one panel
can have close pHashes, but the quarters of the other panel differ. Near dedup uses it to verify a
pair the pHashes matched.
"""
from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from transforms.pixels import to_8bit

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
# The same basis over one quarter of the thumbnail, 4 low rows: the layout hash's 16 bits per quarter.
_QUARTER = _THUMB // 2
_QUARTER_BAND = 4
_QUARTER_BASIS = np.cos(
    np.pi * np.arange(_QUARTER_BAND)[:, None] * (2 * np.arange(_QUARTER)[None, :] + 1) / (2 * _QUARTER))
# Coefficients are rounded before the median comparison so that values equal in exact arithmetic
# (symmetric or blank images) compare equal on every CPU and BLAS: the hash is a stored output.
_DCT_DECIMALS = 6

# A border is uniform when this share of its pixels lies within this many gray levels of the
# outermost ring's median (JPEG ringing and scanner noise stay under it).
_BORDER_TOLERANCE = 12
_BORDER_SHARE = 0.995
_MIN_CONTENT_SHARE = 0.1  # never trim an image down to less than this share of a side
# Companions need not match imagehash: their thumbnails are box-reduced to 3x the size before the
# Lanczos step (Pillow's reducing_gap), a quarter of the cost of a full Lanczos from the work size.
_COMPANION_REDUCING_GAP = 3.0


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
# Cut from the untrimmed image: a panel letter pasted on a black margin also changes the trim.
_LABEL_STRIP = 0.15
LABEL_FREE_BANDS = (
    Window("below-top-strip", 0.0, _LABEL_STRIP, 0.0, 0.0),
    Window("above-bottom-strip", 0.0, 0.0, 0.0, _LABEL_STRIP),
)


@dataclasses.dataclass(frozen=True)
class PerceptualHashes:
    phash: int  # imagehash's pHash of the whole image
    companions: tuple[int, ...]  # trimmed whole image, windows and bands; repeated hashes removed
    layouts: tuple[int, ...]  # the layout hash of each region in `all`, in the same order

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


def _thumbnail(gray: Image.Image, reducing_gap: float | None = None) -> np.ndarray:
    thumb = gray.resize((_THUMB, _THUMB), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    return np.asarray(thumb, dtype=np.float64)


def _above_median(bands: np.ndarray) -> int:
    """One bit per coefficient, row by row, set when above its band's median (bands: (..., k, k))."""
    low = np.round(bands, _DCT_DECIMALS).reshape(-1, bands.shape[-2] * bands.shape[-1])
    bits = low > np.median(low, axis=1, keepdims=True)
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


def _phash_of_thumbnail(thumb: np.ndarray) -> int:
    return _above_median(_BASIS @ thumb @ _BASIS.T)


def _layout_of_thumbnail(thumb: np.ndarray) -> int:
    """Quarters top-left, top-right, bottom-left, bottom-right, 16 bits each."""
    quarters = thumb.reshape(2, _QUARTER, 2, _QUARTER).transpose(0, 2, 1, 3)
    return _above_median(_QUARTER_BASIS @ quarters @ _QUARTER_BASIS.T)


def phash_of_gray(gray: Image.Image) -> int:
    """imagehash.phash of an 8-bit grayscale image."""
    return _phash_of_thumbnail(_thumbnail(gray))


def layout_of_gray(gray: Image.Image) -> int:
    """The layout hash of an 8-bit grayscale image: a pHash of each quarter of its thumbnail."""
    return _layout_of_thumbnail(_thumbnail(gray))


def decode_gray(data: bytes, work_side: int = WORK_SIDE) -> Image.Image:
    """The image as displayed (EXIF orientation applied), in luma, reduced to about `work_side`.

    Raises what Pillow raises on undecodable bytes: callers at the edge turn that into a reason.
    """
    image = Image.open(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.draft("L", (work_side, work_side))  # JPEG: reduced-scale luma decode; others: no-op
        gray = to_8bit(ImageOps.exif_transpose(image), "L")
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
    trimmed = trim_uniform_border(gray)
    regions = [trimmed] if trimmed is not gray else []
    regions += [trimmed.crop(window.box(*trimmed.size)) for window in WINDOWS]
    regions += [gray.crop(band.box(*gray.size)) for band in LABEL_FREE_BANDS]
    thumbs = [_thumbnail(gray)] + [_thumbnail(region, _COMPANION_REDUCING_GAP) for region in regions]
    layout_of: dict[int, int] = {}  # pHash -> layout of the first region with it
    for thumb in thumbs:
        layout_of.setdefault(_phash_of_thumbnail(thumb), _layout_of_thumbnail(thumb))
    whole, *companions = layout_of
    return PerceptualHashes(whole, tuple(companions), tuple(layout_of.values()))


def perceptual_hashes(data: bytes) -> PerceptualHashes:
    """Every hash near dedup uses for one encoded image (JPEG, PNG, GIF, TIFF, ...)."""
    return hashes_of_gray(decode_gray(data))


def phash(data: bytes) -> int:
    """imagehash.phash of one encoded image, decoded at reduced scale."""
    return phash_of_gray(decode_gray(data))
