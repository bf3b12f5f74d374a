"""Ingest stage: input paths/globs -> Records (one per figure or manifest row) + rows for unreadable input.

Globs are expanded on the workers (fileio.MatchAll), never at pipeline construction, so a Dataflow
launcher needs no access to gs:// or s3:// inputs. Each matched file is read by one reader, chosen
by its name; records are then reshuffled so that the image stage spreads over all workers.
"""
from __future__ import annotations

import posixpath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import IndexRow, Reason, Record, Stage
from transforms.base import RecordFn, StageResult, apply_stage
from transforms.manifests import is_manifest, read_manifest


def read_input_file(path: str, images_root: str):
    """Records (or rejected rows) of one input file; dispatch by file name."""
    if is_manifest(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            stub = Record(id=posixpath.basename(path), source_file=posixpath.basename(path))
            return [IndexRow.rejected(stub, Stage.INGEST, Reason.MALFORMED_RECORD, f"not UTF-8: {error.reason}")]
        return read_manifest(text, path, images_root)
    stub = Record(id=posixpath.basename(path), source_file=posixpath.basename(path))
    return [IndexRow.rejected(stub, Stage.INGEST, Reason.MALFORMED_RECORD, "unsupported input file type")]


class ReadInputFileFn(RecordFn):
    stage_name = "ingest"

    def __init__(self, images_root: str) -> None:
        super().__init__()
        self.images_root = images_root

    def handle(self, path: str):
        return read_input_file(path, self.images_root)


class ReadInputs(beam.PTransform):
    def __init__(self, patterns: list[str], images_root: str = "") -> None:
        super().__init__()
        self.patterns = sorted(set(patterns))
        self.images_root = images_root

    def expand(self, pbegin) -> StageResult:
        paths = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "SpreadFiles" >> beam.Reshuffle()
        )
        result = apply_stage(paths, "ReadFiles", ReadInputFileFn(self.images_root))
        return StageResult(result.records | "SpreadRecords" >> beam.Reshuffle(), result.rows)
