"""Shard assignment and tar writing (pure: no Beam).

A record's shard is a range of the 64-bit hash of its key: deterministic, independent of input
order and of the runner's bundling, and roughly `shard_samples` per shard (binomial spread, about
±3% at 1,000). Every shard number from 0 to count-1 is written, even if empty, so names never skip.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from typing import BinaryIO, Iterable

import webdataset as wds

from schemas import Record
from schemas.records import SAMPLE_FIELD_NAMES

TAR_MTIME = 0  # fixed member mtime: byte-identical shards across runs
TAR_OWNER = "chimed"
TXT_EXT = "txt"
JSON_EXT = "json"


def shard_count(samples: int, shard_samples: int) -> int:
    return math.ceil(samples / shard_samples) if samples else 0


def shard_of(key: str, shards: int) -> int:
    position = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
    return (position * shards) >> 64


class HashingWriter(io.RawIOBase):
    """Forwards writes to `sink` while counting bytes and computing sha256 on the way."""

    def __init__(self, sink: BinaryIO) -> None:
        super().__init__()
        self.sink = sink
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sink.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


# Hugging Face's webdataset loader infers the schema from a shard's first 5 samples; an empty list
# there is typed list<null> and a later non-empty one then fails to load. So each shard opens with
# samples that fill its list fields, when it has any.
HF_INFERENCE_SAMPLES = 5
LIST_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name in SAMPLE_FIELD_NAMES and f.type in (list, "list"))


def member_order(records: Iterable[Record]) -> list[Record]:
    """Records by key, except that the first few are chosen (greedily) to fill every list field."""
    ordered = sorted(records, key=lambda r: (r.key, r.id))
    leaders: list[Record] = []
    missing = set(LIST_FIELDS)
    while missing and len(leaders) < HF_INFERENCE_SAMPLES:
        best = max(ordered, key=lambda r: len([f for f in missing if getattr(r, f)]), default=None)
        filled = {f for f in missing if best is not None and getattr(best, f)}
        if not filled:
            break
        leaders.append(best)
        ordered.remove(best)
        missing -= filled
    return leaders + ordered


def sample_members(record: Record, image: bytes, image_format: str) -> dict:
    """The files of one sample; every sample carries the same three."""
    return {
        "__key__": record.key,
        image_format: image,
        TXT_EXT: record.caption_zh.encode("utf-8"),
        JSON_EXT: json.dumps(record.sample_json(), ensure_ascii=False, sort_keys=False).encode("utf-8"),
    }


def write_tar(sink: BinaryIO, samples: Iterable[dict]) -> None:
    """Write samples (already sorted by key) as one uncompressed tar with fixed metadata."""
    writer = wds.TarWriter(sink, user=TAR_OWNER, group=TAR_OWNER, mtime=TAR_MTIME, encoder=False)
    for sample in samples:
        writer.write(sample)
    writer.close()
