"""Write stage: WebDataset shards, the per-record index, the TM, report, dataset card, manifest.

Pixels travel apart from the metadata (see pipeline.py) and meet it here: both are keyed by shard
number, so the only shuffle that carries image bytes is this one.
"""
from __future__ import annotations

import json
from typing import Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import INDEX_SCHEMA, FileInfo, IndexRow, Reason, ShardInfo, Stage, Status, index_part_name, shard_name
from schemas import release, tm_part_name
from transforms.base import ROWS, counter
from transforms.report import count_rows
from transforms.report_stage import BuildReport
from transforms.resume import file_holds, tar_digest
from transforms.shards import member_order, sample_members, shard_count, shard_of, write_tar
from transforms.tm import tm_jsonl

INDEX_PART_ROWS = 1_000_000
RECORDS = "records"
PIXELS = "pixels"
SHARD_NUMBERS = "numbers"


def write_file(output: str, relative_path: str, data: bytes) -> FileInfo:
    import hashlib

    with FileSystems.create(FileSystems.join(output, relative_path), compression_type=CompressionTypes.UNCOMPRESSED) as sink:
        sink.write(data)
    return FileInfo(relative_path, len(data), hashlib.sha256(data).hexdigest())


def index_parts(rows: list[IndexRow]) -> Iterable[tuple[str, bytes]]:
    """Parquet parts of the index, rows sorted by id (then key, for ids given twice)."""
    ordered = sorted(rows, key=lambda row: (row.id, row.key, row.status))
    for number, start in enumerate(range(0, max(len(ordered), 1), INDEX_PART_ROWS)):
        part = ordered[start : start + INDEX_PART_ROWS]
        table = pa.Table.from_pylist([row.as_dict() for row in part], schema=INDEX_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        yield index_part_name(number), sink.getvalue().to_pybytes()


class WriteShardFn(beam.DoFn):
    """One shard number: its kept records and the pixels hashed to it -> the tar + kept index rows."""

    def __init__(self, output: str, image_format: str) -> None:
        super().__init__()
        self.output = output
        self.image_format = image_format
        self.samples = counter("write.samples")
        self.shards_written = counter("write.shards_written")
        self.shards_kept = counter("write.shards_kept")

    def process(self, element):
        number, grouped = element
        name = shard_name(number)
        pixels = dict(grouped[PIXELS])
        samples, seen = [], set()
        for record in member_order(grouped[RECORDS]):
            image = pixels.get(record.key)
            if record.key in seen or image is None:
                detail = "id given by more than one input record" if record.key in seen else "image bytes lost"
                yield beam.pvalue.TaggedOutput(ROWS, IndexRow.rejected(record, Stage.WRITE, Reason.MALFORMED_RECORD, detail))
                continue
            seen.add(record.key)
            samples.append(sample_members(record, image, self.image_format))
            yield beam.pvalue.TaggedOutput(ROWS, IndexRow.of(record, Status.KEPT, shard=name))
        path = FileSystems.join(self.output, name)
        size, sha256 = tar_digest(samples)
        if file_holds(path, size, sha256):  # a rerun: this shard is already complete
            self.shards_kept.inc()
        else:
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as sink:
                write_tar(sink, samples)
            self.shards_written.inc()
        self.samples.inc(len(samples))
        yield ShardInfo(name, len(samples), size, sha256)


class WriteShards(beam.PTransform):
    def __init__(self, output: str, image_format: str, shard_samples: int) -> None:
        super().__init__()
        self.output, self.image_format, self.shard_samples = output, image_format, shard_samples

    def expand(self, inputs):
        records, pixels = inputs[RECORDS], inputs[PIXELS]
        shards = (
            records
            | "CountKept" >> beam.combiners.Count.Globally()
            | "ShardCount" >> beam.Map(shard_count, self.shard_samples)
        )
        count = beam.pvalue.AsSingleton(shards)
        return (
            {
                RECORDS: records | "RecordShard" >> beam.Map(lambda r, n: (shard_of(r.key, n), r), count),
                PIXELS: pixels | "PixelShard" >> beam.Map(lambda kv, n: (shard_of(kv[0], n), kv), count),
                SHARD_NUMBERS: shards | "EveryShard" >> beam.FlatMap(lambda n: [(i, None) for i in range(n)]),
            }
            | "GroupByShard" >> beam.CoGroupByKey()
            | "FilterEmpty" >> beam.Filter(lambda kv: kv[1][SHARD_NUMBERS])  # pixels of dropped records only
            | "WriteTar" >> beam.ParDo(WriteShardFn(self.output, self.image_format)).with_outputs(ROWS, main="shards")
        )


class WriteIndexFn(beam.DoFn):
    def __init__(self, output: str) -> None:
        super().__init__()
        self.output = output

    def process(self, rows):
        for path, data in index_parts(rows):
            yield write_file(self.output, path, data)


class WriteDataset(beam.PTransform):
    """Inputs: {"records": kept Records, "pixels": (key, image bytes), "rows": decided IndexRows,
    "tm_rows": TmRows used or produced, "facts": (name, count) published by the stages}.
    Writes everything under `output`, manifest.json last."""

    def __init__(self, output: str, image_format: str, shard_samples: int, options: dict) -> None:
        super().__init__()
        self.output, self.image_format, self.shard_samples, self.options = output, image_format, shard_samples, options

    def expand(self, inputs):
        written = {RECORDS: inputs[RECORDS], PIXELS: inputs[PIXELS]} | "Shards" >> WriteShards(
            self.output, self.image_format, self.shard_samples
        )
        all_rows = (inputs["rows"], written[ROWS]) | "AllRows" >> beam.Flatten()
        row_list = all_rows | "CollectRows" >> beam.combiners.ToList()
        shard_infos = written.shards | "CollectShards" >> beam.combiners.ToList()
        counts = row_list | "Counts" >> beam.Map(count_rows)
        index_files = row_list | "WriteIndex" >> beam.ParDo(WriteIndexFn(self.output))
        tm_list = inputs["tm_rows"] | "CollectTm" >> beam.combiners.ToList()
        tm_file = tm_list | "WriteTm" >> beam.Map(lambda rows: write_file(self.output, tm_part_name(0), tm_jsonl(rows)))
        run_facts = (
            inputs["facts"]
            | "SumFacts" >> beam.CombinePerKey(sum)
            | "CollectRunFacts" >> beam.combiners.ToList()
            | "SortFacts" >> beam.Map(lambda facts: dict(sorted(facts)))
        )
        report_files = (
            inputs[RECORDS]
            | "Report" >> BuildReport(self.options, row_list, counts, shard_infos, tm_list, run_facts)
            | "WriteReport" >> beam.MapTuple(lambda path, data: write_file(self.output, path, data))
        )
        files = (index_files, tm_file, report_files) | "AllFiles" >> beam.Flatten() | "CollectFiles" >> beam.combiners.ToList()
        return counts | "WriteManifest" >> beam.Map(
            self._write_manifest, beam.pvalue.AsSingleton(shard_infos), beam.pvalue.AsSingleton(files)
        )

    def _write_manifest(self, counts: dict, shards: list[ShardInfo], files: list[FileInfo]) -> dict:
        manifest = {
            release.M_VERSION: release.MANIFEST_VERSION,
            release.M_OPTIONS: self.options,
            release.M_COUNTS: counts,
            release.M_SHARDS: [vars(s) for s in sorted(shards)],
            release.M_FILES: [vars(f) for f in sorted(files)],
        }
        data = (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        write_file(self.output, release.MANIFEST, data)
        return manifest
