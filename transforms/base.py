"""The one shape every record stage has.

A stage's DoFn looks at one Record and yields either the Record (it goes on to the next stage) or
an IndexRow (the stage decided the record's fate: rejected or duplicate), and may publish run facts
(named counts such as LLM tokens or TM hits) with `publish`. `apply_stage` splits the three into a
`StageResult`, so `pipeline.py` can chain stages, collect every decided row for the index (nothing
is dropped without a row) and every fact for the run report.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import IndexRow, Record

ROWS = "rows"
RECORDS = "records"
FACTS = "facts"
METRICS_NAMESPACE = "chimed"


@dataclasses.dataclass
class StageResult:
    records: beam.PCollection  # Record: still in the running
    rows: beam.PCollection  # IndexRow: decided at this stage
    facts: beam.PCollection | None = None  # (name, count): summed into the run report
    tm_rows: beam.PCollection | None = None  # TmRow: translation memory rows used or produced here


class RecordFn(beam.DoFn):
    """Base DoFn for a stage: implement `handle(record)`; counters per stage outcome come free."""

    stage_name = "stage"

    def __init__(self) -> None:
        super().__init__()
        self._counters: dict = {}

    def handle(self, record: Record) -> Iterable[Record | IndexRow]:
        raise NotImplementedError

    def process(self, record: Record, *args, **kwargs) -> Iterator:
        for item in self.handle(record, *args, **kwargs):
            if isinstance(item, beam.pvalue.TaggedOutput):  # a published fact
                yield item
            elif isinstance(item, IndexRow):
                self._count(item.reason or item.status)
                yield beam.pvalue.TaggedOutput(ROWS, item)
            else:
                self._count("passed")
                yield item

    def _count(self, outcome: str) -> None:
        name = f"{self.stage_name}.{outcome}"
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
        counter.inc()


def split_outputs(tagged) -> StageResult:
    return StageResult(records=tagged[RECORDS], rows=tagged[ROWS])


def apply_stage(pcoll: beam.PCollection, label: str, fn: beam.DoFn, *args, **kwargs) -> StageResult:
    """Run a RecordFn (or any DoFn yielding Records, TaggedOutput(ROWS, ...) and facts) as one stage."""
    tagged = pcoll | label >> beam.ParDo(fn, *args, **kwargs).with_outputs(ROWS, FACTS, main=RECORDS)
    return StageResult(records=tagged[RECORDS], rows=tagged[ROWS], facts=tagged[FACTS])


def counter(name: str):
    return Metrics.counter(METRICS_NAMESPACE, name)


def publish(counts: dict) -> Iterator:
    """Add named counts to the Beam counters (for the operator, live) and emit them as facts (for
    the run report: unlike counters, outputs of a retried bundle count once on every runner)."""
    for name, amount in sorted(counts.items()):
        if amount:
            counter(name).inc(amount)
            yield beam.pvalue.TaggedOutput(FACTS, (name, amount))
