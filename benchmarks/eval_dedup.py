"""Near-duplicate evaluation on real images: our hashes + block search vs imagehash.phash brute force.

Images are read at run time from installed packages (scikit-image's `skimage/data`, pydicom's test
files), never stored in the repo. Each original is one *family*: the original plus its generated
copies (JPEG re-encode, resize, crops of 2-5%, grayscale, pasted panel letter, byte copy, white
margin). Distinct-but-similar images are families of their own: aligned faces, frames of one
echocardiography cine loop, CT / MR slices of other patients, two-panel figures sharing a panel,
and figures of one house style with other data (bar charts, Kaplan-Meier curves, Western blots,
drawn here, four to a paper: the pipeline never links two figures of one article).

Every method links items within the threshold and takes connected components, as the pipeline does.
Ours runs without the layout check, with it, and with it and the line-art pixel check (the
pipeline: transforms/inkcheck.py).
  recall(variant)  share of originals whose copy ends in the original's component; in brackets, the
                   share linked to the original directly, as if the two were the only images (the
                   family's other copies cannot bridge the gap: the stricter figure)
  false merges     pairs of distinct families that end in one component

Usage: .venv/bin/python benchmarks/eval_dedup.py [--threshold 6] [--sweep 2 8] [--layout-sweep 4 14]
"""
from __future__ import annotations

import argparse
import io
import itertools
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from transforms.neardup import (
    DEFAULT_HAMMING,
    LAYOUT_HAMMING,
    DuplicateGroups,
    Layouts,
    across_articles,
    block_keys,
    bucket_links,
)
from transforms.inkcheck import ink_map, same_line_art
from transforms.phash import PerceptualHashes, decode_gray, hamming, hashes_of_gray, trim_uniform_border

SAME_PICTURE_AS_ANOTHER = {"chessboard_RGB.png", "examples_rgb_color.dcm"}  # the package ships both
STEREO_VIEW = "motorcycle_right.png"  # the other view of motorcycle_left: reported apart
DICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "examples_jpeg2k.dcm",
               "examples_palette.dcm", "examples_overlay.dcm", "JPEG2000.dcm", "image_dfl.dcm")
ECHO_CINE = "examples_ybr_color.dcm"
ECHO_FRAMES = (0, 10, 20, 29)
FACES = 100  # lfw_subset: the first 100 of its 200 25x25 patches are faces
FACE_SIDE = 100  # shown 4x: the image stage rejects pictures under 64 pixels a side
COMPOSITES = 12
CHARTS = 24  # of each kind: bar charts and survival curves in one journal style, other data
BLOTS = 12
CHART_FAMILIES = ("bar_chart_", "survival_", "western_blot_")
REPRINTED_CHARTS = ("bar_chart_00", "survival_00", "western_blot_00")  # these also get every copy
FIGURES_PER_ARTICLE = 4  # charts and blots come four to a paper, as in a results section


def article_of(family: str) -> str:
    """The paper a chart or blot belongs to; "" for the other families (copies come from elsewhere)."""
    if not family.startswith(CHART_FAMILIES):
        return ""
    kind, _, number = family.rpartition("_")
    return f"{kind}_paper_{int(number) // FIGURES_PER_ARTICLE}"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def cut(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def panel_letter(image: Image.Image, letter: str = "B", share: float = 0.10) -> Image.Image:
    """A white square with a bold letter in the top-left corner, as journals label panels."""
    labelled = image.convert("RGB")
    side = max(8, round(min(image.size) * share))
    draw = ImageDraw.Draw(labelled)
    draw.rectangle((0, 0, side, side), fill="white")
    draw.text((side / 2, side / 2), letter, fill="black", font=ImageFont.load_default(size=side), anchor="mm")
    return labelled


def white_margin(image: Image.Image, share: float = 0.05) -> Image.Image:
    pad = round(max(image.size) * share)
    framed = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), "white")
    framed.paste(image.convert("RGB"), (pad, pad))
    return framed


def random_sides(seed: str):
    rng = random.Random(seed)
    return [rng.uniform(0.02, 0.05) for _ in range(4)]


VARIANTS = {
    "jpeg_q70": lambda im, raw, name: jpeg(im, 70),
    "resize_50": lambda im, raw, name: png(im.resize((max(1, im.width // 2), max(1, im.height // 2)),
                                                     Image.Resampling.BICUBIC)),
    "crop_2_sides": lambda im, raw, name: png(cut(im, 0.02, 0.02, 0.02, 0.02)),
    "crop_5_sides": lambda im, raw, name: png(cut(im, 0.05, 0.05, 0.05, 0.05)),
    "crop_5_corner": lambda im, raw, name: png(cut(im, 0.05, 0.05, 0, 0)),
    "crop_3_one_side": lambda im, raw, name: png(cut(im, 0, 0, 0.03, 0)),
    "crop_random_2_5": lambda im, raw, name: png(cut(im, *random_sides(name))),
    "grayscale": lambda im, raw, name: png(im.convert("L")),
    "panel_letter": lambda im, raw, name: png(panel_letter(im)),
    "white_margin": lambda im, raw, name: png(white_margin(im)),
    "byte_copy": lambda im, raw, name: raw,
}


def _to8(array: np.ndarray) -> Image.Image:
    """A medical frame windowed to 8 bits (0.5-99.5 percentiles), as a figure would show it."""
    low, high = np.percentile(array.astype(np.float64), (0.5, 99.5))
    scaled = np.clip((array - low) / max(high - low, 1e-9), 0, 1) * 255
    return Image.fromarray(scaled.astype(np.uint8))


def load_originals() -> dict[str, Image.Image]:
    import pydicom
    import skimage.data
    from pydicom.data import get_testdata_file

    originals = {}
    for path in sorted(Path(skimage.data.__file__).parent.iterdir()):
        if path.suffix in (".png", ".jpg") and path.name not in SAME_PICTURE_AS_ANOTHER:
            image = Image.open(path)
            originals[path.name] = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    for name in DICOM_FILES:
        pixels = pydicom.dcmread(get_testdata_file(name)).pixel_array
        originals[name] = Image.fromarray(pixels) if pixels.ndim == 3 else _to8(pixels)
    return originals


def load_distinct_similar(originals: dict[str, Image.Image]) -> dict[str, Image.Image]:
    """Families that must stay apart: aligned faces, cine frames, two-panel figures sharing a panel."""
    import pydicom
    import skimage.data
    from pydicom.data import get_testdata_file

    similar = {}
    for number, face in enumerate(skimage.data.lfw_subset()[:FACES]):
        patch = Image.fromarray((face * 255).astype(np.uint8))
        similar[f"face_{number:03d}"] = patch.resize((FACE_SIDE, FACE_SIDE), Image.Resampling.BICUBIC)
    frames = pydicom.dcmread(get_testdata_file(ECHO_CINE)).pixel_array
    for number in ECHO_FRAMES:
        similar[f"echo_frame_{number:02d}"] = Image.fromarray(frames[number])
    names = [n for n in originals if n != STEREO_VIEW]
    rng = random.Random(4)
    for number in range(COMPOSITES):
        shared, first, second = rng.sample(names, 3)
        for variant, other in (("a", first), ("b", second)):
            panels = [originals[name].convert("RGB").resize((256, 256)) for name in (shared, other)]
            figure = Image.new("RGB", (512, 256), "white")
            for index, panel in enumerate(panels):
                figure.paste(panel, (256 * index, 0))
            similar[f"two_panel_{number:02d}{variant}"] = figure
    return similar


def _figure_png(draw) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 3), dpi=100)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def charts_and_blots() -> dict[str, Image.Image]:
    """Distinct figures of one house style, as PMC is full of: bar charts and Kaplan-Meier curves
    with other data, and Western blots with other band intensities."""
    figures = {}
    for number in range(CHARTS):
        rng = np.random.default_rng(number)
        values, errors = rng.uniform(1, 10, 5), rng.uniform(0.2, 1.5, 5)

        def bars(axes, values=values, errors=errors):
            axes.bar(list("ABCDE"), values, yerr=errors, color="0.5", capsize=3)
            axes.set_ylabel("Relative expression")

        figures[f"bar_chart_{number:02d}"] = _figure_png(bars)
        times = np.linspace(0, 60, 61)
        hazards = rng.uniform(0.005, 0.05, 2)

        def survival(axes, hazards=hazards, steps=rng.random((2, 61))):
            for hazard, step, style in zip(hazards, steps, ("-", "--")):
                alive = np.cumprod(1 - hazard * (step < 0.7))
                axes.step(times, alive, style, color="k", where="post")
            axes.set_xlabel("Months")
            axes.set_ylabel("Survival probability")
            axes.set_ylim(0, 1.05)

        figures[f"survival_{number:02d}"] = _figure_png(survival)
    for number in range(BLOTS):
        rng = np.random.default_rng(1000 + number)
        blot = np.full((120, 320), 235.0)
        for row in range(3):
            for lane in range(6):
                y, x = 25 + row * 35, 30 + lane * 48
                strength = rng.uniform(20, 200)
                yy, xx = np.mgrid[0:120, 0:320]
                blot -= strength * np.exp(-(((yy - y) / 4) ** 2) - (((xx - x) / 16) ** 4))
        figures[f"western_blot_{number:02d}"] = Image.fromarray(np.clip(blot, 0, 255).astype(np.uint8))
    return figures


def build_items() -> list[tuple[str, str, bytes]]:
    """(family, variant, encoded bytes) for every item."""
    originals = load_originals()
    charts = charts_and_blots()
    copied = {**originals, **{name: charts[name] for name in REPRINTED_CHARTS}}
    items = []
    for name, image in copied.items():
        raw = png(image)
        items.append((name, "original", raw))
        if name != STEREO_VIEW:
            items += [(name, variant, make(image, raw, name)) for variant, make in VARIANTS.items()]
    similar = {**load_distinct_similar(originals), **charts}
    items += [(name, "original", png(image)) for name, image in similar.items() if name not in copied]
    return items


def item_articles(items) -> list[str]:
    """The article of each item: a chart's paper for an original chart, "" (another, unknown
    article) for every copy, which is what a reprint is."""
    return [article_of(family) if variant == "original" else "" for family, variant, _ in items]


def components(count: int, pairs) -> list[int]:
    groups = DuplicateGroups()
    for a, b in pairs:
        groups.link((a,), (b,))
    root = {int(node): int(kept) for node, kept in groups.survivors()}
    return [root.get(i, i) for i in range(count)]


def brute_force_pairs(hashes: list[int], threshold: int):
    pairs = itertools.combinations(range(len(hashes)), 2)
    return [(i, j) for i, j in pairs if hamming(hashes[i], hashes[j]) <= threshold]


class LineArtCheck:
    """The pipeline's pixel check of line-art pairs, each pair checked once across the sweeps."""

    def __init__(self, maps: list[bytes]) -> None:
        self.maps = maps
        self.checked: dict[tuple[int, int], bool] = {}

    def __call__(self, pair: tuple[int, int]) -> bool:
        if pair not in self.checked:
            self.checked[pair] = same_line_art(self.maps[pair[0]], self.maps[pair[1]])
        return self.checked[pair]


def block_search_pairs(hashes: list[PerceptualHashes], threshold: int, layout_limit: int | None,
                       articles: list[str], line_art: LineArtCheck | None = None):
    """The pipeline's search: block keys -> buckets -> bucket_links, over every hash of every item;
    matched pairs verified by their layouts unless `layout_limit` is None, never within one
    article, and for line art by their ink maps when `line_art` is given."""
    owners = np.array([i for i, item in enumerate(hashes) for _ in item.all], dtype=np.int64)
    values = np.array([h for item in hashes for h in item.all], dtype=np.uint64)
    layouts = np.array([layout for item in hashes for layout in item.layouts], dtype=np.uint64)
    kinds = np.array([kind for item in hashes for kind in item.kinds], dtype=np.int64)
    keys = block_keys(values, threshold, kinds)
    pairs = set()
    for key in np.unique(keys):
        rows = np.flatnonzero((keys == key).any(axis=1))
        check = None if layout_limit is None else Layouts(layouts[rows], np.ones(len(rows), bool), layout_limit)
        links = bucket_links(int(key), values[rows], owners[rows], threshold, layouts=check)
        pairs.update(map(tuple, across_articles(links, articles).tolist()))
    return sorted(pair for pair in pairs if line_art is None or line_art(pair))


def score(items, pairs):
    component = components(len(items), pairs)
    linked = set(map(tuple, pairs))
    index = {(family, variant): i for i, (family, variant, _) in enumerate(items)}
    recall = {}
    for variant in VARIANTS:
        copies = [(index[f, "original"], index[f, variant]) for f, v, _ in items if v == variant]
        caught = sum(component[a] == component[b] for a, b in copies)
        direct = sum((min(a, b), max(a, b)) in linked for a, b in copies)
        recall[variant] = (caught, len(copies), direct)
    members: dict[int, set] = {}
    for i, (family, _, _) in enumerate(items):
        members.setdefault(component[i], set()).add(family)
    merged = sorted(pair for group in members.values() for pair in itertools.combinations(sorted(group), 2))
    stereo = [pair for pair in merged if STEREO_VIEW in pair]
    return recall, [pair for pair in merged if STEREO_VIEW not in pair], stereo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=int, default=DEFAULT_HAMMING)
    parser.add_argument("--sweep", type=int, nargs=2, metavar=("LOW", "HIGH"), help="also print a threshold sweep")
    parser.add_argument("--layout-sweep", type=int, nargs=2, metavar=("LOW", "HIGH"),
                        help="also print misses and false merges per layout limit at --threshold")
    args = parser.parse_args()

    started = time.perf_counter()
    items = build_items()
    datas = [data for _, _, data in items]
    reference = [int(str(__import__("imagehash").phash(Image.open(io.BytesIO(d)))), 16) for d in datas]
    grays = [decode_gray(d) for d in datas]
    trimmed = [trim_uniform_border(gray) for gray in grays]
    ours = [hashes_of_gray(gray, trim) for gray, trim in zip(grays, trimmed)]
    line_art = LineArtCheck([ink_map(trim) for trim in trimmed])
    articles = item_articles(items)
    fast = [h.phash for h in ours]
    families = len({f for f, _, _ in items})
    print(f"{len(items)} items, {families} families, hashed in {time.perf_counter() - started:.1f}s")
    diff = [hamming(a, b) for a, b in zip(fast, reference)]
    print(f"fast pHash vs imagehash.phash: identical {sum(d == 0 for d in diff)}/{len(diff)}, "
          f"mean {np.mean(diff):.2f} bits, 95th pct {np.percentile(diff, 95):.0f}, max {max(diff)}")

    methods = {
        "imagehash.phash, brute force": lambda t: brute_force_pairs(reference, t),
        "ours, no layout check": lambda t: block_search_pairs(ours, t, None, articles),
        f"ours, layouts within {LAYOUT_HAMMING}": lambda t: block_search_pairs(ours, t, LAYOUT_HAMMING, articles),
        "ours + line-art pixel check": lambda t: block_search_pairs(ours, t, LAYOUT_HAMMING, articles, line_art),
    }
    thresholds = range(args.sweep[0], args.sweep[1] + 1) if args.sweep else [args.threshold]
    for threshold in thresholds:
        print(f"\n== threshold {threshold} bits ==")
        results = {name: score(items, pairs(threshold)) for name, pairs in methods.items()}
        print(f"{'variant':18s}" + "".join(f"{name:>36s}" for name in results))
        for variant in VARIANTS:
            print(f"{variant:18s}" + "".join(f"{'%d/%d (%d)' % r[0][variant]:>36s}" for r in results.values()))
        print(f"{'false merges':18s}" + "".join(f"{len(r[1]):>36d}" for r in results.values()))
        print(f"{'stereo pair merged':18s}" + "".join(f"{str(bool(r[2])):>36s}" for r in results.values()))
        for name, (_, merged, _) in results.items():
            if merged:
                print(f"  {name}: {merged[:8]}{' ...' if len(merged) > 8 else ''}")
    if args.layout_sweep:
        print(f"\n== layout limit sweep at {args.threshold} bits ==")
        for limit in range(args.layout_sweep[0], args.layout_sweep[1] + 1, 2):
            pairs = block_search_pairs(ours, args.threshold, limit, articles, line_art)
            recall, merged, _ = score(items, pairs)
            missed = {variant: total - caught for variant, (caught, total, _) in recall.items() if caught < total}
            unlinked = sum(total - direct for _, total, direct in recall.values())
            print(f"layouts within {limit:2d}: copies missed {missed} (not linked directly: {unlinked}), "
                  f"false merges {merged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
