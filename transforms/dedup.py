"""Dedup stage: the exclusion list, exact duplicates by sha256 of the source bytes, then near
duplicates by perceptual hash (transforms/neardup.py, docs/dedup.md).

Survivor order (shared by every dedup step, `survivor_rank`): commercial-use license first, then the
larger image, then the richer (longer) caption, then the smaller id — so the choice is deterministic
and keeps the copy users would pick. Runs on light records (no pixels), so the shuffle carries
metadata only. An exact duplicate whose survivor then loses to a near duplicate names the record
finally kept.
"""
from __future__ import annotations

import apache_beam as beam

from schemas import IndexRow, Reason, Record, Stage, Status
from transforms.base import ROWS, RECORDS, StageResult, apply_stage, counter, split_outputs
from transforms.neardup import DEFAULT_HAMMING, ExcludedHashIndex, survivor_rank
from transforms.neardup_beam import ExcludeHashesFn, NearDeduplicate, RepointDuplicates


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
    def __init__(self, hamming: int = DEFAULT_HAMMING, excluded_hashes: tuple = ()) -> None:
        super().__init__()
        self.hamming = hamming
        self.excluded = ExcludedHashIndex(excluded_hashes, hamming) if excluded_hashes else None

    def expand(self, records) -> StageResult:
        rows = []
        if self.excluded is not None:
            screened = apply_stage(records, "ExcludeHashes", ExcludeHashesFn(self.excluded))
            records, rows = screened.records, [screened.rows]
        tagged = (
            records
            | "BySha256" >> beam.Map(lambda record: (record.sha256, record))
            | "GroupExact" >> beam.GroupByKey()
            | "KeepExact" >> beam.ParDo(KeepExactSurvivorFn()).with_outputs(ROWS, main=RECORDS)
        )
        exact = split_outputs(tagged)
        near = exact.records | "Near" >> NearDeduplicate(self.hamming)
        exact_rows = exact.rows | "ToFinalSurvivor" >> RepointDuplicates(near.survivors)
        return StageResult(near.records, [*rows, exact_rows, near.rows] | "DedupRows" >> beam.Flatten())
