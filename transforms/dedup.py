"""Dedup stage: exact duplicates by sha256 of the source bytes.

Survivor order (shared by every dedup step): commercial-use license first, then the larger image,
then the richer (longer) caption, then the smaller id — so the choice is deterministic and keeps the
copy users would pick. Runs on light records (no pixels), so the shuffle carries metadata only.
"""
from __future__ import annotations

import apache_beam as beam

from schemas import IndexRow, Reason, Record, Stage, Status
from transforms.base import ROWS, RECORDS, StageResult, counter, split_outputs
from transforms.licenses import COMMERCIAL_USE


def survivor_rank(record: Record) -> tuple:
    """Smaller is better: the record kept among duplicates is the one with the smallest rank."""
    return (
        record.source.license not in COMMERCIAL_USE,
        -(record.original_width * record.original_height),
        -len(record.caption),
        record.id,
    )


def pick_survivor(records: list[Record], reason: Reason) -> tuple[Record, list[IndexRow]]:
    ordered = sorted(records, key=survivor_rank)
    kept = ordered[0]
    return kept, [IndexRow.of(r, Status.DUPLICATE, Stage.DEDUP, reason, duplicate_of=kept.id) for r in ordered[1:]]


class KeepExactSurvivorFn(beam.DoFn):
    def __init__(self) -> None:
        super().__init__()
        self.duplicates = counter("dedup.exact_duplicate")

    def process(self, element):
        _, records = element
        kept, rows = pick_survivor(list(records), Reason.EXACT_DUPLICATE)
        for row in rows:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(ROWS, row)
        yield kept


class Deduplicate(beam.PTransform):
    def expand(self, records) -> StageResult:
        tagged = (
            records
            | "BySha256" >> beam.Map(lambda record: (record.sha256, record))
            | "GroupExact" >> beam.GroupByKey()
            | "KeepExact" >> beam.ParDo(KeepExactSurvivorFn()).with_outputs(ROWS, main=RECORDS)
        )
        return split_outputs(tagged)
