"""The fast pHash: imagehash's definition and hex, reduced-scale decoding, robust companions."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from transforms.neardup import DEFAULT_HAMMING, LAYOUT_HAMMING
from transforms.phash import (
    LABEL_FREE_BANDS,
    PLAIN,
    WINDOWED,
    WORK_SIDE,
    decode_gray,
    from_hex,
    hamming,
    hashes_of_gray,
    layout_of_gray,
    perceptual_hashes,
    phash,
    phash_of_gray,
    to_hex,
    trim_uniform_border,
)

imagehash = pytest.importorskip("imagehash")


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def scene(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth random picture (blurred noise plus shapes): structure at every scale pHash sees."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8)) * 255
    image = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, width - 40), rng.integers(0, height - 40)
        colour = tuple(rng.integers(0, 255, 3).tolist())
        draw.ellipse((x, y, x + rng.integers(20, 80), y + rng.integers(20, 80)), fill=colour)
    return image


def reference(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


@pytest.fixture(scope="module")
def camera() -> Image.Image:
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.camera())


def test_hex_is_imagehash_hex_and_round_trips():
    image = scene()
    value = phash_of_gray(image.convert("L"))
    assert to_hex(value) == str(imagehash.phash(image))
    assert from_hex(to_hex(value)) == value and len(to_hex(1)) == 16
    with pytest.raises(ValueError):
        from_hex("abc")


def test_same_bits_as_imagehash_on_the_same_pixels(camera):
    for image in (camera, scene(seed=1), scene(200, 300, seed=2)):
        assert phash_of_gray(image.convert("L")) == reference(image)


def test_reduced_scale_jpeg_decode_stays_within_two_bits(camera):
    big = camera.resize((2048, 2048), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=90)
    gray = decode_gray(data)
    assert WORK_SIDE <= min(gray.size) < 2 * WORK_SIDE  # decoded at 1/4 scale, not 2048 px
    assert hamming(phash(data), reference(Image.open(io.BytesIO(data)))) <= 2


def test_uniform_images_hash_alike_whatever_the_gray_level():
    """All AC coefficients are zero: none exceeds the median, only the DC bit can, on any CPU."""
    hashes = {to_hex(phash(encode(Image.new("L", (100, 80), level)))) for level in (1, 128, 255)}
    assert hashes == {"8000000000000000"}
    assert to_hex(phash(encode(Image.new("L", (100, 80), 0)))) == "0000000000000000"


def test_exif_orientation_applied_and_transparency_on_white():
    image = scene(320, 240, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated_by_tag = encode(image, "JPEG", quality=95, exif=exif)
    rotated_pixels = encode(image.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)
    assert hamming(phash(rotated_by_tag), phash(rotated_pixels)) <= 2
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.new("L", image.size, 0).point(lambda _: 0))  # fully transparent
    assert phash(encode(rgba)) == phash(encode(Image.new("L", image.size, 255)))


def test_sixteen_bit_images_are_scaled_to_their_range():
    ramp = (np.linspace(0, 4000, 200 * 150).reshape(150, 200)).astype(np.uint16)
    deep = Image.fromarray(ramp)
    shallow = Image.fromarray((ramp / 4000 * 255).round().astype(np.uint8))
    assert hamming(phash(encode(deep)), phash(encode(shallow))) <= 2


def test_trim_removes_a_uniform_margin_only():
    content = scene(200, 150, seed=4)
    framed = Image.new("RGB", (260, 190), "white")
    framed.paste(content, (40, 25))
    trimmed = trim_uniform_border(framed.convert("L"))
    assert abs(trimmed.width - 200) <= 2 and abs(trimmed.height - 150) <= 2
    blank = Image.new("L", (100, 100), 255)
    assert trim_uniform_border(blank).size == (100, 100)


def test_companions_drop_repeats_of_the_phash():
    hashes = hashes_of_gray(scene(seed=5).convert("L"))
    assert hashes.phash not in hashes.companions
    assert len(set(hashes.companions)) == len(hashes.companions) and hashes.all[0] == hashes.phash
    assert len(set(hashes.windowed)) == len(hashes.windowed) > 0
    assert hashes.kinds == (PLAIN,) * (1 + len(hashes.companions)) + (WINDOWED,) * len(hashes.windowed)


def test_trim_removes_a_white_page_around_a_black_background_scan():
    content = scene(200, 150, seed=4)
    scan = Image.new("RGB", (240, 190), "black")
    scan.paste(content, (20, 20))
    page = Image.new("RGB", (300, 250), "white")
    page.paste(scan, (30, 30))
    trimmed = trim_uniform_border(page.convert("L"))
    assert abs(trimmed.width - 200) <= 2 and abs(trimmed.height - 150) <= 2


def test_each_hash_comes_with_the_layout_of_its_region():
    gray = scene(seed=5).convert("L")
    hashes = hashes_of_gray(gray)
    assert len(hashes.layouts) == len(hashes.all) and hashes.layouts[0] == layout_of_gray(gray)


def closest(a: bytes, b: bytes, kind: int | None = None) -> int:
    """The smallest distance between a hash of `a` and a hash of `b` of the same kind (near dedup
    never compares kinds), of `kind` only when given."""
    first, second = perceptual_hashes(a), perceptual_hashes(b)
    return min(
        hamming(x, y)
        for x, x_kind in zip(first.all, first.kinds)
        for y, y_kind in zip(second.all, second.kinds)
        if x_kind == y_kind and kind in (None, x_kind)
    )


@pytest.mark.parametrize("copy", ["crop_corner", "crop_sides", "white_margin"])
def test_companions_catch_crops_and_margins_that_defeat_plain_phash(camera, copy):
    w, h = camera.size
    edited = {
        "crop_corner": lambda: camera.crop((round(w * 0.05), round(h * 0.05), w, h)),
        "crop_sides": lambda: camera.crop((round(w * 0.05), round(h * 0.05), w - round(w * 0.05), h - round(h * 0.05))),
        "white_margin": lambda: _framed(camera),
    }[copy]()
    original, changed = encode(camera), encode(edited)
    assert hamming(phash(original), phash(changed)) > DEFAULT_HAMMING  # plain pHash misses it
    assert closest(original, changed) <= DEFAULT_HAMMING


def test_windowed_hashes_catch_a_cropped_texture_that_every_plain_hash_misses():
    """A periodic texture's low band is nearly flat: a 2% crop moves many plain bits wherever the
    windows sit; the Hann weighting keeps the centre, which the crop does not touch."""
    data = pytest.importorskip("skimage.data")
    brick = Image.fromarray(data.brick())
    w, h = brick.size
    cropped = brick.crop((round(w * 0.02), round(h * 0.02), w - round(w * 0.02), h - round(h * 0.02)))
    original, copy = encode(brick), encode(cropped)
    assert closest(original, copy, PLAIN) > DEFAULT_HAMMING
    assert closest(original, copy, WINDOWED) <= DEFAULT_HAMMING


def _framed(image: Image.Image) -> Image.Image:
    framed = Image.new("L", (image.width + 60, image.height + 60), 255)
    framed.paste(image, (30, 30))
    return framed


def test_distinct_pictures_stay_far_apart(camera):
    others = [encode(scene(seed=seed)) for seed in range(6, 9)]
    assert all(closest(encode(camera), other) > DEFAULT_HAMMING for other in others)


def test_hash_command_prints_the_exclude_hashes_format(tmp_path, capsys):
    import argparse

    from chimed_pipeline.commands import hash as hash_command
    from transforms.neardup import parse_hash_lines

    image = tmp_path / "figure.png"
    image.write_bytes(encode(scene(seed=9)))
    (tmp_path / "notes.txt").write_text("not an image")
    parser = argparse.ArgumentParser()
    hash_command.add_arguments(parser)
    status = hash_command.main(parser.parse_args([str(image), str(tmp_path / "notes.txt")]))
    out, err = capsys.readouterr()
    assert status == 1 and "notes.txt" in err
    assert out == f"{str(imagehash.phash(scene(seed=9)))}  {image}\n"
    assert [entry.label for entry in parse_hash_lines(out.splitlines())] == [str(image)]


def panel_letter(image: Image.Image, share: float = 0.10) -> Image.Image:
    labelled = image.convert("RGB")
    side = round(min(image.size) * share)
    draw = ImageDraw.Draw(labelled)
    draw.rectangle((0, 0, side, side), fill="white")
    draw.text((side / 2, side / 2), "B", fill="black", anchor="mm")
    return labelled


def test_a_panel_letter_on_a_dark_margin_is_caught_by_the_bands_and_the_windowed_hashes():
    """The white box on a black margin defeats the trim and every plain window; the label-free bands
    leave it out, and the windowed hashes all but ignore a corner."""
    figure = Image.new("RGB", (300, 300), "black")
    oval = Image.new("L", (220, 260), 0)
    ImageDraw.Draw(oval).ellipse((0, 0, 219, 259), fill=255)
    figure.paste(scene(220, 260, seed=3), (40, 20), oval)
    original, labelled = perceptual_hashes(encode(figure)), perceptual_hashes(encode(panel_letter(figure)))
    gray = figure.convert("L")
    bands = {phash_of_gray(gray.crop(band.box(*gray.size))) for band in LABEL_FREE_BANDS}
    plain = [original.phash, *original.companions]
    without_bands = [h for h in plain if h not in bands]
    labelled_plain = [labelled.phash, *labelled.companions]
    assert min(hamming(a, b) for a in without_bands for b in labelled_plain) > DEFAULT_HAMMING
    assert min(hamming(a, b) for a in plain for b in labelled_plain) <= DEFAULT_HAMMING
    assert min(hamming(a, b) for a in original.windowed for b in labelled.windowed) <= DEFAULT_HAMMING


def two_panel(left: int, right: int) -> Image.Image:
    figure = Image.new("RGB", (512, 256), "white")
    figure.paste(scene(256, 256, seed=left), (0, 0))
    figure.paste(scene(256, 256, seed=right), (256, 0))
    return figure


def test_layouts_tell_apart_most_figures_that_share_a_panel_and_keep_copies():
    figures = [two_panel(1, right) for right in range(2, 12)]
    layouts = [perceptual_hashes(encode(figure)).layouts[0] for figure in figures]
    copies = [perceptual_hashes(encode(figure.convert("RGB"), "JPEG", quality=70)).layouts[0] for figure in figures]
    assert all(hamming(a, b) <= LAYOUT_HAMMING for a, b in zip(layouts, copies))
    apart = [hamming(a, b) > LAYOUT_HAMMING for a, b in itertools.combinations(layouts, 2)]
    assert sum(apart) >= 0.8 * len(apart)  # half of the figure differs: ~16 of the 64 bits on average
