"""Stand-in figure images for the bundled sample, drawn from a seed (no third-party image is shipped).

Each kind imitates the look of a common PMC figure type closely enough for the pipeline's image,
hash and QA stages to have something realistic to work on; they are not medical images.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _noise(rng: np.random.Generator, shape: tuple, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, shape)


def _gray(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")


def _ellipse_mask(shape, center, radii) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 <= 1.0


def cross_section(rng, size, brain: bool) -> Image.Image:
    """CT / MRI-like slice: a body (or head) ellipse with organs inside, on black."""
    w, h = size
    img = np.zeros((h, w))
    body = _ellipse_mask(img.shape, (w / 2, h / 2), (w * (0.36 if brain else 0.45), h * 0.42))
    img[body] = 95 if brain else 70
    if not brain:
        ring = body & ~_ellipse_mask(img.shape, (w / 2, h / 2), (w * 0.42, h * 0.39))
        img[ring] = 230  # ribs / skull
    for _ in range(rng.integers(4, 8)):
        c = (w / 2 + rng.uniform(-0.25, 0.25) * w, h / 2 + rng.uniform(-0.22, 0.22) * h)
        r = (rng.uniform(0.04, 0.13) * w, rng.uniform(0.04, 0.12) * h)
        img[_ellipse_mask(img.shape, c, r) & body] = rng.uniform(40, 200)
    img[body] += _noise(rng, img.shape, 9.0)[body]
    return _gray(img).filter(ImageFilter.GaussianBlur(1.2)).convert("RGB")


def chest_xray(rng, size) -> Image.Image:
    """Chest film: lungs, heart, spine and ribs placed by the seed (so two seeds are two patients)."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    exposure = rng.uniform(-15, 15) * (xx / w - 0.5) + rng.uniform(-20, 20) * (yy / h - 0.5)  # uneven film
    img = 170 + 40 * np.cos((xx - w / 2) / w * np.pi) + exposure
    centre_y = h * rng.uniform(0.42, 0.54)
    for side in (-1, 1):
        lung = _ellipse_mask(img.shape, (w / 2 + side * w * rng.uniform(0.16, 0.24), centre_y),
                             (w * rng.uniform(0.11, 0.17), h * rng.uniform(0.24, 0.34)))
        img[lung] = 55 + rng.uniform(-8, 8)
    heart = (w * rng.uniform(0.45, 0.58), centre_y + h * 0.12)
    img[_ellipse_mask(img.shape, heart, (w * rng.uniform(0.08, 0.14), h * 0.12))] = 190
    img[:, int(w * 0.47) : int(w * 0.53)] = 215  # spine
    for k in range(int(rng.integers(6, 10))):
        y = h * (0.2 + 0.07 * k)
        img[(np.abs(yy - y - 0.02 * (xx - w / 2) ** 2 / w) < 2.5)] += 35  # ribs
    img += _noise(rng, img.shape, 6.0)
    return _gray(img).filter(ImageFilter.GaussianBlur(1.5)).convert("RGB")


def histology(rng, size) -> Image.Image:
    """H&E-like field: pink stroma with purple nuclei."""
    w, h = size
    image = Image.new("RGB", size, (236, 188, 206))
    draw = ImageDraw.Draw(image)
    for _ in range(int(w * h / 900)):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 8)
        shade = tuple(int(v) for v in (rng.uniform(70, 120), rng.uniform(40, 80), rng.uniform(130, 180)))
        draw.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=shade)
    for _ in range(12):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        draw.line((x, y, x + rng.uniform(-80, 80), y + rng.uniform(-80, 80)), fill=(245, 160, 190), width=6)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def ultrasound(rng, size) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    apex = w / 2 + rng.uniform(-0.12, 0.12) * w
    angle = np.arctan2(xx - apex, yy + h * 0.05)
    radius = np.hypot(xx - apex, yy + h * 0.05)
    sector = (np.abs(angle) < rng.uniform(0.45, 0.75)) & (radius < h * rng.uniform(0.8, 0.97))
    img = np.zeros((h, w))
    img[sector] = 60 + np.abs(_noise(rng, img.shape, 45.0))[sector]
    for _ in range(int(rng.integers(1, 4))):
        lesion = _ellipse_mask(img.shape, (apex + rng.uniform(-0.2, 0.2) * w, h * rng.uniform(0.3, 0.75)),
                               (w * rng.uniform(0.04, 0.1), h * rng.uniform(0.03, 0.08)))
        img[lesion & sector] = rng.choice([15, 200])
    return _gray(img).filter(ImageFilter.GaussianBlur(1.0)).convert("RGB")


def chart(rng, size) -> Image.Image:
    """A bar chart, the most common non-image figure in PMC."""
    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line((50, 20, 50, h - 40), fill="black", width=2)
    draw.line((50, h - 40, w - 20, h - 40), fill="black", width=2)
    bars = int(rng.integers(4, 8))
    step = (w - 90) / bars
    for i in range(bars):
        top = h - 40 - rng.uniform(0.2, 0.9) * (h - 80)
        color = ((40, 90, 160), (200, 80, 60))[i % 2]
        draw.rectangle((60 + i * step, top, 60 + i * step + step * 0.7, h - 41), fill=color)
    return image


def fundus(rng, size) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size, "black")
    draw = ImageDraw.Draw(image)
    draw.ellipse((w * 0.05, h * 0.05, w * 0.95, h * 0.95), fill=(190, 80, 40))
    side = rng.choice([-1, 1])  # left or right eye: the disc sits on the nasal side
    disc = (w * (0.5 + side * rng.uniform(0.12, 0.25)), h * rng.uniform(0.38, 0.62))
    macula = (w * (0.5 - side * rng.uniform(0.05, 0.15)), h * rng.uniform(0.4, 0.6))
    r = w * rng.uniform(0.06, 0.1)
    draw.ellipse((macula[0] - r, macula[1] - r, macula[0] + r, macula[1] + r), fill=(120, 40, 25))
    for _ in range(int(rng.integers(5, 10))):
        end = (rng.uniform(w * 0.1, w * 0.9), rng.uniform(h * 0.1, h * 0.9))
        draw.line((*disc, *end), fill=(130, 30, 20), width=int(rng.integers(3, 7)))
    draw.ellipse((disc[0] - 30, disc[1] - 30, disc[0] + 30, disc[1] + 30), fill=(250, 210, 140))
    return image.filter(ImageFilter.GaussianBlur(1.5))


KINDS = {
    "ct": lambda rng, size: cross_section(rng, size, brain=False),
    "mri": lambda rng, size: cross_section(rng, size, brain=True),
    "xray": chest_xray,
    "histology": histology,
    "ultrasound": ultrasound,
    "chart": chart,
    "fundus": fundus,
}


def render(kind: str, seed: int, size: tuple[int, int]) -> Image.Image:
    return KINDS[kind](np.random.default_rng(seed), size)
