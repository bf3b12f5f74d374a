"""Report stage: per-record caption facts counted over the run, then the report files (see run_report)."""
from __future__ import annotations

import logging

import apache_beam as beam

from transforms.run_report import caption_facts, report_files


class CaptionFactsFn(beam.DoFn):
    """Kept Record -> (fact, value) pairs: modality, English words, Chinese jieba tokens."""

    def setup(self) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        # A private tokenizer with jieba's own dictionary: counts do not depend on words other stages add.
        self.tokenizer = jieba.Tokenizer()
        self.tokenizer.initialize()

    def process(self, record):
        yield from caption_facts(record, self.tokenizer.lcut)


class BuildReport(beam.PTransform):
    """Kept Records -> (relative path, bytes) of the report files and the dataset card. The other
    inputs are single-element PCollections: all IndexRows, their counts, ShardInfos, TmRows, and the
    run facts (summed counts the stages published: articles, TM hits, LLM requests and tokens)."""

    def __init__(self, options: dict, rows, counts, shards, tm_rows, run_facts) -> None:
        super().__init__()
        self.options = options
        self.rows, self.counts, self.shards, self.tm_rows = rows, counts, shards, tm_rows
        self.run_facts = run_facts

    def expand(self, records):
        singleton = beam.pvalue.AsSingleton
        return (
            records
            | "CaptionFacts" >> beam.ParDo(CaptionFactsFn())
            | "CountFacts" >> beam.combiners.Count.PerElement()
            | "CollectFacts" >> beam.combiners.ToList()
            | "RenderReport" >> beam.FlatMap(
                report_files, singleton(self.rows), singleton(self.counts), singleton(self.shards),
                singleton(self.tm_rows), singleton(self.run_facts), self.options,
            )
        )
