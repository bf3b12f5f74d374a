"""Pixel check of line-art pairs: what perceptual hashes cannot tell apart (pure, no Beam).

Charts in one house style (survival curves, line plots) share axes, ticks and labels, and differ in
thin lines whose low frequencies barely move: two Kaplan-Meier plots of one journal can have the
same pHash. For such *line art* (mostly blank background, little ink) the image stage keeps a small
ink map (the trimmed image, inverted, long side INK_SIDE), and near dedup links two line-art
records only when their maps show the same picture: the second is aligned on the first (scale and
shift by FFT cross-correlation) and, blurred by a pixel, must leave little residual ink. A resized,
cropped, re-encoded or labelled copy does; a plot with other curves does not.

Thresholds come from benchmarks/eval_dedup.py (docs/dedup.md).
"""
from __future__ import annotations

import io
import operator

import numpy as np
from PIL import Image

from transforms.pixels import background_level

INK_SIDE = 128
# Line art: this share of the trimmed image lies within BACKGROUND_TOLERANCE gray levels of a
# bright background (the median of the outer ring).
LINE_ART_BACKGROUND_SHARE = 0.8
BACKGROUND_TOLERANCE = 24
BRIGHT_BACKGROUND = 200
# Alignment search over the relative scales a 2-5% crop (and trimming) can produce: coarse steps of
# 3%, then 1% steps around the best; the overlap the alignment must keep.
_COARSE_SCALES = np.geomspace(0.88, 1.14, 9)
_FINE_STEPS = np.geomspace(0.98, 1.02, 5)
_MIN_OVERLAP = 0.7
_BLUR = 1.0  # pixels of the map: forgives resampling and a sub-pixel misalignment, not a moved curve
MAX_RESIDUAL = 0.18  # share of the ink energy left after alignment; eval: copies <= 0.095, other plots >= 0.27


def is_line_art(gray: np.ndarray) -> bool:
    background = background_level(gray)
    if background < BRIGHT_BACKGROUND:
        return False
    near = np.abs(gray.astype(np.int16) - background) <= BACKGROUND_TOLERANCE
    return bool(near.mean() >= LINE_ART_BACKGROUND_SHARE)


def ink_map(trimmed: Image.Image) -> bytes:
    """The PNG ink map of a trimmed 8-bit grayscale image, or b"" when it is not line art."""
    if not is_line_art(np.asarray(trimmed)):
        return b""
    scale = INK_SIDE / max(trimmed.size)
    size = (max(1, round(trimmed.width * scale)), max(1, round(trimmed.height * scale)))
    inverted = Image.fromarray(255 - np.asarray(trimmed.resize(size, Image.Resampling.BOX)))
    buffer = io.BytesIO()
    inverted.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def decode_ink_map(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)


_KERNEL = np.exp(-0.5 * (np.arange(-3, 4) / _BLUR) ** 2)
_KERNEL /= _KERNEL.sum()


def _blur(pixels: np.ndarray) -> np.ndarray:
    """A separable Gaussian blur of _BLUR pixels (zero beyond the edges: ink maps are 0 there)."""
    rows = np.apply_along_axis(np.convolve, 1, pixels, _KERNEL, mode="same")
    return np.apply_along_axis(np.convolve, 0, rows, _KERNEL, mode="same")


def _aligned_at(spectrum: np.ndarray, shape: tuple, first: np.ndarray, second: np.ndarray, scale: float):
    """(score, scale, second scaled by it, offset of its top-left corner in first) at the shift that
    maximizes their cross-correlation (`spectrum`: first's FFT at `shape`)."""
    height, width = max(2, round(second.shape[0] * scale)), max(2, round(second.shape[1] * scale))
    scaled = np.asarray(Image.fromarray(second.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR),
                        dtype=np.float64)
    correlation = np.fft.irfft2(spectrum * np.fft.rfft2(scaled[::-1, ::-1], shape), shape)
    peak = np.unravel_index(np.argmax(correlation), correlation.shape)
    score = correlation[peak] / np.sqrt((first ** 2).sum() * (scaled ** 2).sum() + 1e-9)
    return score, scale, scaled, (peak[0] - height + 1, peak[1] - width + 1)


def _best_alignment(first: np.ndarray, second: np.ndarray):
    """The best of `_aligned_at` over the scales, coarse to fine; first's FFT is taken once."""
    largest = np.ceil(np.array(second.shape) * _COARSE_SCALES[-1] * _FINE_STEPS[-1]).astype(int)
    shape = (first.shape[0] + largest[0], first.shape[1] + largest[1])
    spectrum = np.fft.rfft2(first, shape)
    score = operator.itemgetter(0)  # max() keeps the first of equal scores: deterministic
    coarse = max((_aligned_at(spectrum, shape, first, second, scale) for scale in _COARSE_SCALES), key=score)
    return max((_aligned_at(spectrum, shape, first, second, coarse[1] * step) for step in _FINE_STEPS), key=score)


def ink_residual(first: np.ndarray, second: np.ndarray) -> float:
    """Share of the ink energy the aligned pair leaves unexplained (1.0 when they barely overlap)."""
    _, _, scaled, (top, left) = _best_alignment(first, second)
    rows = slice(max(0, top), min(first.shape[0], top + scaled.shape[0]))
    cols = slice(max(0, left), min(first.shape[1], left + scaled.shape[1]))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return 1.0
    overlap = (rows.stop - rows.start) * (cols.stop - cols.start)
    if overlap < _MIN_OVERLAP * min(first.size, scaled.size):
        return 1.0
    a = _blur(first[rows, cols])
    b = _blur(scaled[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left])
    gain = (a * b).sum() / max((b * b).sum(), 1e-9)
    return float(((a - gain * b) ** 2).sum() / max((a * a).sum(), 1e-9))


def same_line_art(first: bytes, second: bytes) -> bool:
    """Whether two ink maps show the same picture; a record without one is not checked (True)."""
    if not first or not second:
        return True
    return ink_residual(decode_ink_map(first), decode_ink_map(second)) <= MAX_RESIDUAL
