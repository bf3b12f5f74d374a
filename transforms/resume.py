"""Resumable writes: a file that already holds exactly the bytes a run would write is left alone.

A shard's bytes are a pure function of its samples (fixed tar metadata, sorted members), so the
writer first streams the tar through a hash without storing it, then compares with what is on
storage: same size (from the listing, no read) and then same sha256 (one streamed read). Only a
verified copy is kept, so a rerun into the same output rewrites what an interrupted or different
run left behind and skips everything else. No manifest or marker file is trusted: an interrupted
run writes no manifest, and one from an earlier run may describe other options.
"""
from __future__ import annotations

import hashlib
import io
from typing import Iterable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.shards import HashingWriter, write_tar

READ_CHUNK = 8 << 20


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return len(data)


def tar_digest(samples: Iterable[dict]) -> tuple[int, str]:
    """(bytes, sha256) of the tar `write_tar` would write for these samples, without keeping it."""
    hashing = HashingWriter(_Discard())
    write_tar(hashing, samples)
    return hashing.size, hashing.sha256


def file_holds(path: str, size: int, sha256: str) -> bool:
    """True when `path` exists with exactly `size` bytes whose sha256 is `sha256`."""
    listed = FileSystems.match([path])[0].metadata_list
    if len(listed) != 1 or listed[0].size_in_bytes != size:
        return False
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == sha256
