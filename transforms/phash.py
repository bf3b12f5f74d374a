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

Plain hashes weigh every pixel alike, so a crop that lines up with none of those windows (a periodic
texture such as histology or a brick wall cut 2% off each side) moves many of their bits. *Windowed*
hashes (kind WINDOWED) weigh the thumbnail with a Hann window before the DCT, so the picture's
centre counts and its edges, where crops cut and panel letters sit, hardly do: they survive a change
of scale of several percent. They are taken of the trimmed image, of a 3x3 grid of windows shifted
by 2% of a side and of an inner window (a copy cropped by 2-5% on any sides lines up with one of
them within 1%), and of the label-free bands. The two kinds are separate hash spaces: near dedup
compares a plain hash only with plain hashes and a windowed one only with windowed ones.

Every hash comes with a *layout* hash of the same region: the same median rule applied to each
quarter of the thumbnail on its own (4x4 low band per quarter, 64 bits). It says where the
low-frequency structure sits, which a whole-region pHash blurs: two-panel figures sharing one panel
can have close pHashes, but the quarters of the other panel differ. Near dedup uses it to verify a
pair the pHashes matched.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from transforms.pixels import background_level, to_8bit

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
# Companions need not match imagehash: the square they are cut from is box-reduced to 3x its size
# before the Lanczos step (Pillow's reducing_gap), a quarter of the cost of a full Lanczos.
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


# Companion regions are cut from the image resized once to this square side (the thumbnail is square
# anyway), which places the windows within a pixel (2% of 128 is 2.56 pixels) for the price of one
# resize at the work size.
_GRID_SIDE = 128
_SHIFT = 0.02
_INNER_CUT = 0.05
_X = (np.arange(_THUMB) + 0.5) / _THUMB
_HANN = np.outer(np.sin(np.pi * _X) ** 2, np.sin(np.pi * _X) ** 2)

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


_WHOLE = Window("whole", 0.0, 0.0, 0.0, 0.0)
SHIFTED_WINDOWS = tuple(
    Window(f"shifted{dx:+d}{dy:+d}", _SHIFT * (1 + dx), _SHIFT * (1 + dy), _SHIFT * (1 - dx), _SHIFT * (1 - dy))
    for dx in (-1, 0, 1) for dy in (-1, 0, 1)
) + (Window("inner", _INNER_CUT, _INNER_CUT, _INNER_CUT, _INNER_CUT),)

# Hash kinds: hashes of different kinds are never compared with each other.
PLAIN = 0
WINDOWED = 1


@dataclasses.dataclass(frozen=True)
class PerceptualHashes:
    phash: int  # imagehash's pHash of the whole image
    companions: tuple[int, ...]  # plain hashes of the trimmed image, windows and bands; repeats removed
    windowed: tuple[int, ...]  # windowed hashes (kind WINDOWED); repeats removed
    layouts: tuple[int, ...]  # the layout hash of each region in `all`, in the same order

    @property
    def all(self) -> tuple[int, ...]:
        return (self.phash, *self.companions, *self.windowed)

    @property
    def kinds(self) -> tuple[int, ...]:
        """The kind of each hash in `all`."""
        return (PLAIN,) * (1 + len(self.companions)) + (WINDOWED,) * len(self.windowed)


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


def _above_median(bands: np.ndarray) -> list[int]:
    """(n, ..., k, k) coefficient bands -> n hashes: per item, one bit per coefficient, band by band
    and row by row, set when above its band's median."""
    count, side = len(bands), bands.shape[-1]
    low = np.round(bands, _DCT_DECIMALS).reshape(count, -1, side * side)
    bits = low > np.median(low, axis=2, keepdims=True)
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits.reshape(count, -1), axis=1)]


def _phashes(thumbs: np.ndarray) -> list[int]:
    """The pHash of each (32, 32) thumbnail in `thumbs` (n, 32, 32)."""
    return _above_median(_BASIS @ thumbs @ _BASIS.T)


def _windowed_hashes(thumbs: np.ndarray) -> list[int]:
    """The pHash rule on each thumbnail's deviation from its mean, weighed by a Hann window (the mean
    is taken out first, or the window's own spectrum would set every bit alike)."""
    deviations = thumbs - thumbs.mean(axis=(1, 2), keepdims=True)
    return _above_median(_BASIS @ (deviations * _HANN) @ _BASIS.T)


def _layouts(thumbs: np.ndarray) -> list[int]:
    """Per thumbnail, quarters top-left, top-right, bottom-left, bottom-right, 16 bits each."""
    quarters = thumbs.reshape(len(thumbs), 2, _QUARTER, 2, _QUARTER).transpose(0, 1, 3, 2, 4)
    return _above_median(_QUARTER_BASIS @ quarters @ _QUARTER_BASIS.T)


def phash_of_gray(gray: Image.Image) -> int:
    """imagehash.phash of an 8-bit grayscale image."""
    return _phashes(_thumbnail(gray)[None])[0]


def layout_of_gray(gray: Image.Image) -> int:
    """The layout hash of an 8-bit grayscale image: a pHash of each quarter of its thumbnail."""
    return _layouts(_thumbnail(gray)[None])[0]


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


_TRIM_PASSES = 2  # a white page margin around a black-background scan is two margins


def trim_uniform_border(gray: Image.Image) -> Image.Image:
    """The image without the uniform margins around it (white page, black scanner background)."""
    trimmed = gray
    for _ in range(_TRIM_PASSES):
        inner = _trim_once(trimmed)
        if inner is trimmed:
            break
        trimmed = inner
    return trimmed


def _trim_once(gray: Image.Image) -> Image.Image:
    pixels = np.asarray(gray, dtype=np.int16)
    near = np.abs(pixels - background_level(pixels)) <= _BORDER_TOLERANCE
    rows = np.flatnonzero(near.mean(axis=1) < _BORDER_SHARE)
    cols = np.flatnonzero(near.mean(axis=0) < _BORDER_SHARE)
    if rows.size == 0 or cols.size == 0:
        return gray  # blank: nothing but border
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    height, width = pixels.shape
    if bottom - top < _MIN_CONTENT_SHARE * height or right - left < _MIN_CONTENT_SHARE * width:
        return gray
    return gray.crop((int(left), int(top), int(right), int(bottom)))


def _distinct(hashes: list[int], layouts: list[int]) -> dict[int, int]:
    """hash -> layout of the first region with that hash, in region order."""
    layout_of: dict[int, int] = {}
    for value, layout in zip(hashes, layouts):
        layout_of.setdefault(value, layout)
    return layout_of


def _square(gray: Image.Image) -> Image.Image:
    """The image resized once to a small square that every companion region is cut from."""
    return gray.resize((_GRID_SIDE, _GRID_SIDE), Image.Resampling.LANCZOS, reducing_gap=_COMPANION_REDUCING_GAP)


def _lanczos_rows(start: int, stop: int) -> np.ndarray:
    """(32, _GRID_SIDE) weights that resample pixels [start, stop) of a line to 32 with an
    antialiased Lanczos-3 kernel, as Pillow's resize does (in floats, without its 8-bit rounding and
    clipping)."""
    scale = (stop - start) / _THUMB
    stretch = max(scale, 1.0)  # downscaling widens the kernel: the antialiasing
    rows = np.zeros((_THUMB, _GRID_SIDE))
    for out in range(_THUMB):
        centre = start + (out + 0.5) * scale
        taps = np.arange(max(start, int(centre - 3 * stretch)), min(stop, int(np.ceil(centre + 3 * stretch))))
        distance = (taps + 0.5 - centre) / stretch
        weights = np.sinc(distance) * np.sinc(distance / 3)
        rows[out, taps] = weights / weights.sum()
    return rows


@functools.lru_cache(maxsize=None)
def _resamplers(windows: tuple[Window, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per window of the square, the row and column resampling matrices: the window's 32x32
    thumbnail is rows @ square @ columns.T, so all windows take one batched matrix product."""
    boxes = [window.box(_GRID_SIDE, _GRID_SIDE) for window in windows]
    rows = np.stack([_lanczos_rows(top, bottom) for _, top, _, bottom in boxes])
    columns = np.stack([_lanczos_rows(left, right) for left, _, right, _ in boxes])
    return rows, columns


def _region_thumbnails(square: Image.Image, windows: tuple[Window, ...]) -> np.ndarray:
    """(len(windows), 32, 32) thumbnails of the windows of a _GRID_SIDE square."""
    rows, columns = _resamplers(windows)
    return rows @ np.asarray(square, dtype=np.float64) @ columns.transpose(0, 2, 1)


def hashes_of_gray(gray: Image.Image, trimmed: Image.Image | None = None) -> PerceptualHashes:
    """Every hash of an 8-bit grayscale image; `trimmed` is its trim_uniform_border when the
    caller has it already (the image stage needs it for the ink map too)."""
    trimmed = trim_uniform_border(gray) if trimmed is None else trimmed
    trimmed_square = _square(trimmed)
    trimmed_thumb, *windows = _region_thumbnails(trimmed_square, (_WHOLE, *WINDOWS, *SHIFTED_WINDOWS))
    windows, shifted = windows[:len(WINDOWS)], windows[len(WINDOWS):]
    gray_square = trimmed_square if trimmed is gray else _square(gray)  # nothing trimmed: one resize
    bands = list(_region_thumbnails(gray_square, LABEL_FREE_BANDS))
    plain_thumbs = np.stack([_thumbnail(gray), *([trimmed_thumb] if trimmed is not gray else []), *windows, *bands])
    windowed_thumbs = np.stack([trimmed_thumb, *shifted, *bands])
    plain = _distinct(_phashes(plain_thumbs), _layouts(plain_thumbs))
    windowed = _distinct(_windowed_hashes(windowed_thumbs), _layouts(windowed_thumbs))
    whole, *companions = plain
    return PerceptualHashes(whole, tuple(companions), tuple(windowed), (*plain.values(), *windowed.values()))


def perceptual_hashes(data: bytes) -> PerceptualHashes:
    """Every hash near dedup uses for one encoded image (JPEG, PNG, GIF, TIFF, ...)."""
    return hashes_of_gray(decode_gray(data))


def phash(data: bytes) -> int:
    """imagehash.phash of one encoded image, decoded at reduced scale."""
    return phash_of_gray(decode_gray(data))
