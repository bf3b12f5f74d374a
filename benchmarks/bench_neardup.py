"""Near dedup at scale on Beam's in-process FnApiRunner: 100k and 1M synthetic records.

Every record gets a uniformly random 64-bit pHash; a share of them get a planted near duplicate
(the same hash with 1..threshold random bits flipped). Prints, per size, the wall time of the whole
stage (records -> kept records + near_duplicate rows), the recall of the planted pairs, the links
found by chance, and the time ratio of the largest size over the smallest (near-linear: <= 12).

With `--hashes-per-record K`, every record also carries K - 1 more random hashes, half plain
companions and half windowed (real records carry about 20: docs/dedup.md), so the search does the
work of K hashes per record; the planted pairs share the pHash only.

Usage: .venv/bin/python benchmarks/bench_neardup.py [--sizes 100000 1000000] [--threshold N]
                                                    [--hashes-per-record K]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from schemas import Record
from transforms.neardup import DEFAULT_HAMMING
from transforms.neardup_beam import NearDeduplicate
from transforms.phash import to_hex

SHARD = 50_000  # records generated per input element
PLANTED_SHARE = 0.01


def shard_hashes(shard: int, size: int, threshold: int) -> tuple[np.ndarray, int]:
    """Random hashes of one shard; its last `planted` records copy earlier ones with a few bits flipped."""
    rng = np.random.default_rng(shard)
    hashes = rng.integers(0, 2**64, size, dtype=np.uint64, endpoint=False)
    planted = int(size * PLANTED_SHARE)
    for offset in range(planted):
        value = int(hashes[offset])
        for bit in rng.choice(64, rng.integers(1, threshold + 1), replace=False):
            value ^= 1 << int(bit)
        hashes[size - planted + offset] = value
    return hashes, planted


def record_id(shard: int, index: int) -> str:
    return f"s{shard:04d}_{index:06d}"


def shard_records(shard: int, size: int, threshold: int, per_record: int):
    hashes, _ = shard_hashes(shard, size, threshold)
    extra = np.random.default_rng([shard, 1]).integers(0, 2**64, (size, per_record - 1), dtype=np.uint64)
    plain = (per_record - 1) // 2
    for index, value in enumerate(hashes.tolist()):
        others = [to_hex(int(h)) for h in extra[index]]
        yield Record(id=record_id(shard, index), phash=to_hex(value), phashes=tuple(others[:plain]),
                     phashes_windowed=tuple(others[plain:]), original_width=100, original_height=100)


def planted_pairs(shards: int, size: int, threshold: int) -> set[frozenset]:
    pairs = set()
    for shard in range(shards):
        _, planted = shard_hashes(shard, size, threshold)
        pairs.update(frozenset((record_id(shard, i), record_id(shard, size - planted + i))) for i in range(planted))
    return pairs


def run(total: int, threshold: int, per_record: int, out: Path) -> tuple[float, set[frozenset]]:
    shards, size = max(1, total // SHARD), min(total, SHARD)
    started = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        records = (
            pipeline
            | beam.Create(range(shards))
            | beam.Reshuffle()
            | beam.FlatMap(shard_records, size, threshold, per_record)
        )
        result = records | NearDeduplicate(threshold)
        (
            result.rows
            | beam.Map(lambda row: f"{row.id}\t{row.duplicate_of}")
            | beam.io.WriteToText(str(out / "dups"), shard_name_template="")
        )
    elapsed = time.perf_counter() - started
    found = {frozenset(line.split("\t")) for line in (out / "dups").read_text().splitlines()}
    return elapsed, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threshold", type=int, default=DEFAULT_HAMMING)
    parser.add_argument("--hashes-per-record", type=int, default=1)
    args = parser.parse_args()
    times = {}
    for total in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, found = run(total, args.threshold, args.hashes_per_record, Path(tmp))
        planted = planted_pairs(max(1, total // SHARD), min(total, SHARD), args.threshold)
        times[total] = elapsed
        print(f"{total:>9,} records: {elapsed:7.1f}s  planted pairs found {len(planted & found)}/{len(planted)}"
              f" (recall {len(planted & found) / len(planted):.4f})  chance links {len(found - planted)}")
    low, high = min(times), max(times)
    if high != low:
        print(f"time ratio {high:,}/{low:,} records: {times[high] / times[low]:.1f} (size ratio {high / low:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
