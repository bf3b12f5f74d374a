"""The line-art pixel check: copies of a plot pass, plots of the same style with other curves do not."""
from __future__ import annotations

import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageDraw

from schemas import Record, Source
from transforms.inkcheck import ink_map, same_line_art
from transforms.neardup_beam import NearDeduplicate
from transforms.phash import decode_gray, hashes_of_gray, to_hex, trim_uniform_border


def survival_plot(seed: int) -> Image.Image:
    """Two Kaplan-Meier arms in one fixed style: only the curves change with the seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    figure, axes = plt.subplots(figsize=(4, 3), dpi=100)
    times = np.linspace(0, 60, 61)
    for hazard, style in zip(rng.uniform(0.005, 0.05, 2), ("-", "--")):
        axes.step(times, np.cumprod(1 - hazard * (rng.random(61) < 0.7)), style, color="k", where="post")
    axes.set_xlabel("Months")
    axes.set_ylabel("Survival probability")
    axes.set_ylim(0, 1.05)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def map_of(data: bytes) -> bytes:
    return ink_map(trim_uniform_border(decode_gray(data)))


def labelled(image: Image.Image) -> Image.Image:
    copy = image.copy()
    side = round(min(image.size) * 0.1)
    draw = ImageDraw.Draw(copy)
    draw.rectangle((0, 0, side, side), fill="white")
    draw.text((side / 2, side / 2), "B", fill="black", anchor="mm")
    return copy


@pytest.fixture(scope="module")
def plot() -> Image.Image:
    return survival_plot(0)


def test_only_line_art_gets_an_ink_map(plot):
    data = pytest.importorskip("skimage.data")
    assert map_of(encode(plot))
    assert map_of(encode(Image.fromarray(data.camera()))) == b""


@pytest.mark.parametrize("copy", ["jpeg", "half_size", "crop", "grayscale", "panel_letter"])
def test_copies_of_a_plot_are_the_same_picture(plot, copy):
    w, h = plot.size
    edited = {
        "jpeg": lambda: encode(plot, "JPEG", quality=70),
        "half_size": lambda: encode(plot.resize((w // 2, h // 2), Image.Resampling.BICUBIC)),
        "crop": lambda: encode(plot.crop((round(w * 0.03), round(h * 0.04), w - round(w * 0.02), h))),
        "grayscale": lambda: encode(plot.convert("L")),
        "panel_letter": lambda: encode(labelled(plot)),
    }[copy]()
    assert same_line_art(map_of(encode(plot)), map_of(edited))


def test_plots_with_other_curves_are_not_though_their_hashes_meet(plot):
    """Same style, other data: some pair's pHashes are within the default threshold, and the
    pixel check keeps every pair apart."""
    plots = [plot] + [survival_plot(seed) for seed in range(1, 6)]
    maps = [map_of(encode(p)) for p in plots]
    hashes = [hashes_of_gray(p.convert("L")) for p in plots]
    closest = min(
        (x ^ y).bit_count()
        for i, first in enumerate(hashes) for second in hashes[i + 1:]
        for x, x_kind in zip(first.all, first.kinds) for y, y_kind in zip(second.all, second.kinds) if x_kind == y_kind
    )
    assert closest <= 3
    assert not any(same_line_art(maps[i], maps[j]) for i in range(len(maps)) for j in range(i + 1, len(maps)))


def test_records_without_maps_are_not_checked():
    assert same_line_art(b"", b"anything")


def test_near_dedup_on_beam_keeps_other_plots_and_drops_a_copy(plot):
    other = survival_plot(2)
    copy = plot.resize((plot.width // 2, plot.height // 2), Image.Resampling.BICUBIC)
    value = 0x0F0F_3C3C_A5A5_5A5A  # one pHash for all three: the hashes cannot tell them apart
    records = [
        Record(id=name, phash=to_hex(value), ink_map=map_of(encode(image)), original_width=side, original_height=side,
               source=Source(pmcid=pmcid))
        for name, image, side, pmcid in (("plot", plot, 400, "PMC1"), ("other", other, 400, "PMC2"),
                                         ("copy", copy, 200, "PMC3"))
    ]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        result = pipeline | beam.Create(records) | NearDeduplicate(3)
        kept = result.records | "Kept" >> beam.Map(lambda r: (r.id, r.ink_map))
        rows = result.rows | "Rows" >> beam.Map(lambda row: (row.id, row.duplicate_of))
        assert_that(kept, equal_to([("plot", b""), ("other", b"")]), label="kept")  # maps dropped after dedup
        assert_that(rows, equal_to([("copy", "plot")]), label="rows")
