"""Image stage: load, validate, normalize (pure helpers + the Beam stage).

Order of checks, each a reason from the enum: missing_image (no such file), empty_image (0 bytes),
undecodable_image (no readable header), then from the header alone, before any pixel is decoded (so
a decompression bomb never allocates): image_too_large, image_too_small, bad_aspect_ratio; last,
undecodable_image again when the pixel data itself is broken.
Normalization: EXIF orientation applied, mode -> RGB (alpha composited on white, 16-bit scaled),
longest side capped (the original size is kept on the record), encoded deterministically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings

from PIL import Image, ImageOps

from schemas import IndexRow, Reason, Record, Stage
from transforms.base import RecordFn
from transforms.inkcheck import ink_map
from transforms.phash import decode_gray, hashes_of_gray, to_hex, trim_uniform_border
from transforms.pixels import to_8bit

# Decompression bombs are refused from the header by our own cap (`ImageLimits.max_pixels`), before
# decoding; Pillow's global check is off so that it cannot raise from inside open() instead.
DEFAULT_MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None

JPEG_QUALITY = 92
_EXIF_ORIENTATION = 0x0112
_ORIENTATIONS_SWAPPING_SIDES = (5, 6, 7, 8)


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_side: int = 1024  # longest side of the stored image
    image_format: str = "jpg"  # jpg | png, one per dataset
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 64
    max_aspect_ratio: float = 10.0


@dataclasses.dataclass(frozen=True)
class NormalizedImage:
    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int


class ImageRejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def encode(image: Image.Image, image_format: str) -> bytes:
    """Deterministic encoding: fixed settings, no timestamps, no metadata carried over."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False)
    return buffer.getvalue()


def normalize_image(data: bytes, limits: ImageLimits) -> NormalizedImage:
    """Validate and normalize one image; raises ImageRejected with a reason from the enum."""
    if not data:
        raise ImageRejected(Reason.EMPTY_IMAGE, "image file is empty")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # header only: nothing decoded yet
    except Exception as error:  # Pillow raises many types for unknown or truncated formats
        raise ImageRejected(Reason.UNDECODABLE_IMAGE, f"cannot identify image: {type(error).__name__}") from None
    if width * height > limits.max_pixels:
        raise ImageRejected(Reason.IMAGE_TOO_LARGE, f"{width}x{height} exceeds {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise ImageRejected(Reason.IMAGE_TOO_SMALL, f"{width}x{height} under {limits.min_side} px")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageRejected(Reason.BAD_ASPECT_RATIO, f"aspect ratio {ratio:.1f} over {limits.max_aspect_ratio}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if image.getexif().get(_EXIF_ORIENTATION) in _ORIENTATIONS_SWAPPING_SIDES:
                width, height = height, width  # the original size as displayed
            if image.format == "JPEG":  # decode at reduced scale when the target is much smaller
                image.draft("RGB", (limits.max_side, limits.max_side))
            image.load()
            rgb = to_8bit(ImageOps.exif_transpose(image), "RGB")
    except Exception as error:
        raise ImageRejected(Reason.UNDECODABLE_IMAGE, f"decode failed: {type(error).__name__}: {error}"[:200]) from None
    if max(rgb.size) > limits.max_side:
        rgb.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    return NormalizedImage(encode(rgb, limits.image_format), rgb.size[0], rgb.size[1], width, height)


def read_image_bytes(uri: str) -> bytes | None:
    """Bytes of an image through Beam's FileSystems (local, gs://, s3://); None when it does not exist."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(uri):
        return None
    with FileSystems.open(uri, compression_type="uncompressed") as handle:
        return handle.read()


class ProcessImageFn(RecordFn):
    """Loads pixels when the record only names a file, then validates and normalizes them."""

    stage_name = "image"

    def __init__(self, limits: ImageLimits) -> None:
        super().__init__()
        self.limits = limits

    def handle(self, record: Record):
        data = record.image_bytes
        if not data and record.image_uri:
            try:
                data = read_image_bytes(record.image_uri)
            except OSError as error:
                data = None
                detail = f"cannot read {record.source.image}: {type(error).__name__}"
            else:
                detail = f"no file {record.source.image}"
            if data is None:
                yield IndexRow.rejected(record, Stage.IMAGE, Reason.MISSING_IMAGE, detail)
                return
        record = dataclasses.replace(record, sha256=hashlib.sha256(data).hexdigest())
        try:
            image = normalize_image(data, self.limits)
        except ImageRejected as rejected:
            yield IndexRow.rejected(record, Stage.IMAGE, rejected.reason, rejected.detail)
            return
        gray = decode_gray(image.data)  # the stored image: a sample's phash is its image's
        trimmed = trim_uniform_border(gray)
        hashes = hashes_of_gray(gray, trimmed)
        yield dataclasses.replace(
            record,
            image_bytes=image.data,
            width=image.width,
            height=image.height,
            original_width=image.original_width,
            original_height=image.original_height,
            phash=to_hex(hashes.phash),
            phashes=tuple(map(to_hex, hashes.companions)),
            phashes_windowed=tuple(map(to_hex, hashes.windowed)),
            phash_layouts=tuple(map(to_hex, hashes.layouts)),
            ink_map=ink_map(trimmed),
        )
