"""Hashing throughput on large JPEGs: our reduced-scale pHash vs imagehash.phash, same bytes, same process.

The JPEGs are scikit-image's sample pictures (read from the installed package) upscaled to a
longest side of `--side` pixels, the size of a full-resolution journal figure, and encoded in
memory. Prints images per second for imagehash.phash, for our pHash alone and for the full set of
hashes the pipeline stores (pHash + companions), the ratios to imagehash (target >= 4x), and how
many bits our pHash differs from imagehash's on these images.

Usage: .venv/bin/python benchmarks/bench_phash.py [--side 3000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from transforms.phash import hamming, perceptual_hashes, phash


def large_jpegs(side: int) -> list[bytes]:
    import skimage.data

    jpegs = []
    for path in sorted(Path(skimage.data.__file__).parent.iterdir()):
        if path.suffix not in (".png", ".jpg"):
            continue
        image = Image.open(path).convert("RGB")
        if min(image.size) < 64:
            continue
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def reference_phash(data: bytes) -> int:
    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def throughput(function, jpegs: list[bytes], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for data in jpegs:
            function(data)
    return rounds * len(jpegs) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000, help="longest side of the test JPEGs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    jpegs = large_jpegs(args.side)
    megabytes = sum(map(len, jpegs)) / len(jpegs) / 1e6
    print(f"{len(jpegs)} JPEGs, longest side {args.side} px, {megabytes:.1f} MB on average")
    baseline = throughput(reference_phash, jpegs, args.rounds)
    ours = throughput(phash, jpegs, args.rounds)
    full = throughput(perceptual_hashes, jpegs, args.rounds)
    print(f"imagehash.phash             {baseline:7.1f} images/s")
    print(f"ours: pHash                 {ours:7.1f} images/s   ratio {ours / baseline:.1f}x")
    print(f"ours: pHash + companions    {full:7.1f} images/s   ratio {full / baseline:.1f}x")
    bits = [hamming(phash(data), reference_phash(data)) for data in jpegs]
    print(f"bits differing from imagehash.phash: mean {np.mean(bits):.2f}, max {max(bits)}, "
          f"identical {sum(b == 0 for b in bits)}/{len(bits)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
