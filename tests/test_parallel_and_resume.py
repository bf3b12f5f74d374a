"""Local runs at scale: multi-process output equals in-process output byte for byte, and a rerun into
the same output rewrites only shards that are missing or damaged.

Budget: three runs of the bundled sample (about 1.5 min on 2 cores).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import run_pipeline
from schemas import release
from transforms.resume import file_holds, tar_digest

SHARDED = ("--shard-samples", "4")  # several shards from the sample, so shard assignment is exercised
OLD_MTIME_NS = 1_000_000_000 * 10**9


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sharded_release(tmp_path_factory) -> Path:
    return run_pipeline(tmp_path_factory.mktemp("sharded") / "out", *SHARDED)


def test_multi_processing_gives_the_same_bytes(sharded_release, tmp_path):
    parallel = run_pipeline(
        tmp_path / "out", *SHARDED, "--direct_running_mode=multi_processing", "--direct_num_workers=2"
    )
    expected = tree_bytes(sharded_release)
    assert len([name for name in expected if name.startswith(release.SHARDS_DIR)]) >= 3
    assert tree_bytes(parallel) == expected


def test_rerun_rewrites_only_missing_or_damaged_shards(sharded_release, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(sharded_release, output)
    shards = sorted((output / release.SHARDS_DIR).glob("*.tar"))
    for shard in shards:
        os.utime(shard, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    missing, flipped, truncated, *intact = shards
    missing.unlink()
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the hash can tell
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:1000])  # what an interrupted local write leaves

    run_pipeline(output, *SHARDED)

    assert tree_bytes(output) == tree_bytes(sharded_release)
    assert intact and all(shard.stat().st_mtime_ns == OLD_MTIME_NS for shard in intact)
    assert all(shard.stat().st_mtime_ns != OLD_MTIME_NS for shard in (missing, flipped, truncated))


def test_tar_digest_matches_the_written_file(tmp_path):
    from transforms.shards import write_tar

    samples = [{"__key__": f"k{n}", "txt": f"样本 {n}".encode(), "json": b"{}"} for n in range(3)]
    path = tmp_path / "shard.tar"
    with open(path, "wb") as sink:
        write_tar(sink, samples)
    size, sha256 = tar_digest(samples)
    assert size == path.stat().st_size
    assert file_holds(str(path), size, sha256)
    assert not file_holds(str(path), size, "0" * 64)
    assert not file_holds(str(path), size + 1, sha256)
    assert not file_holds(str(tmp_path / "absent.tar"), size, sha256)
