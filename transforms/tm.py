"""Translation memory files: read with precedence, written sorted (pure helpers + Beam reader).

Precedence (DESIGN appendix): the first `--tm` given wins, then later ones, then the output's own
`tm/`; inside one file the first row for a lookup key wins. Rows are keyed by `tm_lookup_key`.
"""
from __future__ import annotations

import json
import logging
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import TmRow
from transforms.base import counter

LOG = logging.getLogger(__name__)


def parse_tm_lines(lines: Iterable[str]) -> Iterator[tuple[int, TmRow]]:
    """(line number, row) for every usable line; rows without source or target are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            row = TmRow.from_dict(data)
        except (json.JSONDecodeError, TypeError, AttributeError):
            LOG.warning("translation memory line %d is not a TM row; skipped", number)
            continue
        if row.source.strip() and row.target.strip():
            yield number, row


def tm_jsonl(rows: Iterable[TmRow]) -> bytes:
    """One JSON object per line, sorted by lookup key: the same rows always give the same bytes."""
    ordered = sorted(rows, key=lambda row: (row.lookup_key, row.target))
    return "".join(json.dumps(row.as_dict(), ensure_ascii=False) + "\n" for row in ordered).encode("utf-8")


class ReadTmFn(beam.DoFn):
    """(rank, pattern) -> (lookup key, ((rank, path, line), TmRow)) for every row of every match."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_read = counter("tm.rows_read")

    def process(self, element):
        rank, pattern = element
        matches = FileSystems.match([pattern])[0].metadata_list
        for path in sorted(m.path for m in matches):
            with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
                lines = handle.read().decode("utf-8-sig").splitlines()
            for number, row in parse_tm_lines(lines):
                self.rows_read.inc()
                yield row.lookup_key, ((rank, path, number), row)


class ReadTranslationMemory(beam.PTransform):
    """All TM rows from `patterns`, earlier patterns taking precedence."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = list(patterns)

    def expand(self, pbegin):
        return (
            pbegin
            | "TmPatterns" >> beam.Create(list(enumerate(self.patterns)))
            | "ReadTm" >> beam.ParDo(ReadTmFn())
        )
