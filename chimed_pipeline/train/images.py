"""Image preprocessing split in two: geometry in data-loader workers, arithmetic on the device.

Workers decode, pad to a square with the image processor's mean colour (LLaVA-1.5's
`expand2square`), resize and centre-crop exactly as the CLIP image processor would, and ship
uint8 pixels (4x less to copy between processes than float32). The training step rescales and
normalizes them on the device with the same processor's constants. JPEGs are decoded at a reduced
DCT scale when they are at least twice the target size (Pillow's `draft`), which is what lets two
workers keep up with a GPU at stage-1 batch rates.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class ImageGeometry:
    """The parts of a CLIP image processor's configuration that preprocessing needs."""

    resize_to: int  # shortest edge after resizing
    crop_height: int
    crop_width: int
    resample: int  # a PIL resampling filter
    rescale_factor: float
    mean: tuple
    std: tuple

    @classmethod
    def from_processor(cls, processor) -> "ImageGeometry":
        crop = processor.crop_size if processor.do_center_crop else None
        size = processor.size
        shortest = size.get("shortest_edge") or min(size["height"], size["width"])
        return cls(
            resize_to=shortest,
            crop_height=crop["height"] if crop else shortest,
            crop_width=crop["width"] if crop else shortest,
            resample=int(processor.resample),
            rescale_factor=float(processor.rescale_factor),
            mean=tuple(float(m) for m in processor.image_mean),
            std=tuple(float(s) for s in processor.image_std),
        )

    @property
    def background(self) -> tuple:
        """LLaVA-1.5's padding colour: the processor's mean, in 0-255."""
        return tuple(int(m * 255) for m in self.mean)


def load_square(data: bytes, geometry: ImageGeometry) -> np.ndarray:
    """Encoded image bytes -> uint8 (3, crop_height, crop_width). Raises on undecodable bytes."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (geometry.resize_to, geometry.resize_to))  # JPEG only; no-op otherwise
    image = image.convert("RGB")
    side = max(image.size)
    if image.width != image.height:
        square = Image.new("RGB", (side, side), geometry.background)
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = square
    if side != geometry.resize_to:
        image = image.resize((geometry.resize_to, geometry.resize_to), resample=geometry.resample)
    top = (geometry.resize_to - geometry.crop_height) // 2
    left = (geometry.resize_to - geometry.crop_width) // 2
    pixels = np.asarray(image)[top : top + geometry.crop_height, left : left + geometry.crop_width]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def normalize(pixels, geometry: ImageGeometry, dtype):
    """uint8 (B, 3, H, W) tensor -> the vision tower's input, on the tensor's device."""
    import torch

    mean = torch.tensor(geometry.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(geometry.std, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels.float() * geometry.rescale_factor - mean) / std).to(dtype)
