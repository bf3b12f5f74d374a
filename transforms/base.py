"""The one shape every record stage has.

A stage's DoFn looks at one Record and yields either the Record (it goes on to the next stage) or
an IndexRow (the stage decided the record's fate: rejected or duplicate). `apply_stage` splits the
two into a `StageResult`, so `pipeline.py` can chain stages and collect every decided row for the
index: nothing is dropped without a row.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import IndexRow, Record

ROWS = "rows"
RECORDS = "records"
METRICS_NAMESPACE = "chimed"


@dataclasses.dataclass
class StageResult:
    records: beam.PCollection  # Record: still in the running
    rows: beam.PCollection  # IndexRow: decided at this stage


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
            if isinstance(item, IndexRow):
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
    """Run a RecordFn (or any DoFn yielding Records and TaggedOutput(ROWS, ...)) as one stage."""
    tagged = pcoll | label >> beam.ParDo(fn, *args, **kwargs).with_outputs(ROWS, main=RECORDS)
    return split_outputs(tagged)


def counter(name: str):
    return Metrics.counter(METRICS_NAMESPACE, name)
