"""The pipeline, read top to bottom as the data-flow diagram.

ingest -> image -> license -> dedup -> text -> translate -> instruct -> write. Each stage passes
on the records still in the running and hands the rows it decided (rejected, duplicate) to the
index; pixels leave the records after the image stage and meet them again in the writer.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from chimed_pipeline.config import RunConfig
from schemas import Record, release
from transforms.base import apply_stage
from transforms.dedup import Deduplicate
from transforms.images import ProcessImageFn
from transforms.ingest import ReadInputs
from transforms.instruct import BuildInstructions
from transforms.license_filter import FilterLicenseFn
from transforms.text import CleanCaptionFn
from transforms.tm import ReadTranslationMemory
from transforms.translate import Translate, translate_misses
from transforms.write import WriteDataset


def tm_patterns(config: RunConfig) -> list[str]:
    """`--tm` first (in the order given), then the output's own tm/ so a rerun pays nothing twice."""
    own = FileSystems.join(config.output, release.TM_DIR, "*.jsonl")
    return [*config.tm, own]


def build_pipeline(pipeline: beam.Pipeline, config: RunConfig):
    ingested = pipeline | "Ingest" >> ReadInputs(
        list(config.inputs), config.images, config.pmcids, config.file_list, config.license)
    images = apply_stage(ingested.records, "Images", ProcessImageFn(config.image))
    pixels = images.records | "Pixels" >> beam.Map(lambda record: (record.key, record.image_bytes))
    records = images.records | "DropPixels" >> beam.Map(Record.without_image)
    licensed = apply_stage(records, "License", FilterLicenseFn(config.license))
    unique = licensed.records | "Dedup" >> Deduplicate(config.dedup_hamming, config.excluded_hashes)
    captions = apply_stage(unique.records, "Captions", CleanCaptionFn())
    memory = pipeline | "TranslationMemory" >> ReadTranslationMemory(tm_patterns(config))
    translated = captions.records | "Translate" >> Translate(memory, translate_misses(config.llm))
    instructed = translated.records | "Instruct" >> BuildInstructions(config.qa, config.llm, memory)
    stages = (ingested, images, licensed, unique, captions, translated, instructed)
    decided = [stage.rows for stage in stages] | "DecidedRows" >> beam.Flatten()
    facts = [stage.facts for stage in stages if stage.facts is not None] | "RunFacts" >> beam.Flatten()
    return {
        "records": instructed.records,
        "pixels": pixels,
        "rows": decided,
        "tm_rows": [s.tm_rows for s in stages if s.tm_rows is not None] | "TmRows" >> beam.Flatten(),
        "facts": facts,
    } | "Write" >> WriteDataset(config.output, config.image.image_format, config.shard_samples, config.manifest_options())
