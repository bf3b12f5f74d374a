"""`python -m chimed_pipeline run`: build the dataset. Flags not listed here go to Beam's PipelineOptions."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re

from chimed_pipeline.config import DEFAULT_SHARD_SAMPLES, RunConfig
from chimed_pipeline.llm import add_llm_arguments, llm_config_from_args
from transforms.images import ImageLimits
from transforms.instruct import QA_LLM, QA_MODES, default_qa_mode, llm_requested
from transforms.licenses import LicensePolicy
from transforms.neardup import DEFAULT_HAMMING, MAX_HAMMING, parse_hash_lines

PASS_UNKNOWN_ARGS = True
LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner")
LOG = logging.getLogger("chimed_pipeline.run")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", default=[], metavar="PATH_OR_GLOB",
                        help="manifests, articles, packages (local or any Beam filesystem); default: the bundled sample")
    parser.add_argument("--images", default="", help="image root for manifest rows (default: beside the manifest)")
    parser.add_argument("--file-list", default="", metavar="OA_FILE_LIST",
                        help="PMC oa_file_list.csv/.txt: license where an article's XML names none; articles it "
                        "lists under a license that --license rejects are skipped unread")
    parser.add_argument("--pmcids", default="", metavar="FILE", help="read only the articles listed (one PMCID a line)")
    parser.add_argument("--output", default="out", help="dataset directory (local or gs://...; default ./out)")
    parser.add_argument("--license", choices=[p.value for p in LicensePolicy], default=LicensePolicy.COMMERCIAL.value,
                        help="commercial: CC BY, CC0, public domain; noncommercial: any CC; any: everything")
    parser.add_argument("--tm", nargs="+", default=[], metavar="PATH_OR_GLOB",
                        help="translation memories (JSONL), earlier ones take precedence")
    parser.add_argument("--qa", choices=QA_MODES, default=None,
                        help="stage-2 QA for records without it: llm, template (offline) or none "
                        "(default: llm with --llm-model, else template)")
    parser.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES, help="target samples per shard")
    parser.add_argument("--image-format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--image-max-side", type=int, default=ImageLimits.max_side)
    parser.add_argument("--dedup-hamming", type=int, default=DEFAULT_HAMMING, metavar="BITS",
                        help=f"near duplicates: perceptual hashes at most BITS apart (0-{MAX_HAMMING}, "
                        f"default {DEFAULT_HAMMING}; docs/dedup.md)")
    parser.add_argument("--exclude-hashes", default="", metavar="FILE",
                        help="drop images within --dedup-hamming bits of a hash in FILE (the `hash` command's "
                        "output), e.g. evaluation benchmarks' images")
    add_llm_arguments(parser)


def _check_local_inputs(paths: list[str]) -> list[str]:
    """Local paths must exist (a typo should fail now, not after a job starts); URIs are left to the workers."""
    missing = [p for p in paths if not _URI.match(p) and not any(c in p for c in "*?[") and not os.path.exists(p)]
    if missing:
        raise SystemExit(f"error: input not found: {', '.join(missing)}")
    return [p if _URI.match(p) else os.path.abspath(p) for p in paths]


def _local_path(path: str) -> str:
    return path if _URI.match(path) or not path else os.path.abspath(path)


def _read_excluded_hashes(path: str) -> tuple:
    from apache_beam.io.filesystems import FileSystems

    path = _check_local_inputs([path])[0]
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        text = handle.read().decode("utf-8")
    try:
        return tuple(parse_hash_lines(text.splitlines()))
    except ValueError as error:
        raise SystemExit(f"error: --exclude-hashes {path}: {error}") from None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    inputs, images, tm = args.input, args.images, list(args.tm)
    if not inputs:
        from chimed_pipeline.sample import materialize_sample

        sample = materialize_sample()
        inputs, images, tm = sample.inputs, images or sample.images, [*tm, sample.tm]
        LOG.info("no --input: building the bundled sample from %s", sample.root)
    if args.shard_samples < 1 or args.image_max_side < 16:
        raise SystemExit("error: --shard-samples must be >= 1 and --image-max-side >= 16")
    if not 0 <= args.dedup_hamming <= MAX_HAMMING:
        raise SystemExit(f"error: --dedup-hamming must be between 0 and {MAX_HAMMING}")
    llm = llm_config_from_args(args)
    qa = args.qa or default_qa_mode(llm)
    if qa == QA_LLM and not llm_requested(llm):
        raise SystemExit("error: --qa llm needs --llm-model (or --llm-dry-run)")
    return RunConfig(
        inputs=tuple(_check_local_inputs(inputs)),
        output=_local_path(args.output),
        images=_local_path(images),
        file_list=_check_local_inputs([args.file_list])[0] if args.file_list else "",
        pmcids=_check_local_inputs([args.pmcids])[0] if args.pmcids else "",
        license=LicensePolicy(args.license),
        tm=tuple(_check_local_inputs(tm)),
        llm=llm,
        shard_samples=args.shard_samples,
        image=ImageLimits(max_side=args.image_max_side, image_format=args.image_format),
        qa=qa,
        dedup_hamming=args.dedup_hamming,
        excluded_hashes=_read_excluded_hashes(args.exclude_hashes) if args.exclude_hashes else (),
    )


def make_pipeline(beam_args: list[str]):
    """A Beam pipeline; locally Beam's in-process FnApiRunner (the DirectRunner of Beam 2.77 would
    first download the Prism binary), which honours --direct_num_workers / --direct_running_mode."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner in LOCAL_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def summarize(output: str) -> str:
    """Counts by status and reason, shards, the run facts (TM hits, LLM cost), and where it all is."""
    from apache_beam.io.filesystems import FileSystems

    from schemas import release

    def read_json(relative: str) -> dict:
        with FileSystems.open(FileSystems.join(output, relative)) as handle:
            return json.loads(handle.read())

    manifest = read_json(release.MANIFEST)
    run_facts = read_json(f"{release.REPORT_DIR}/stats.json").get("run", {})
    counts = manifest[release.M_COUNTS]
    lines = [
        f"input records: {counts['input_records']}  " + "  ".join(f"{k}: {v}" for k, v in counts["status"].items()),
        *[f"  {reason}: {n}" for reason, n in counts["reason"].items()],
        f"shards: {len(manifest[release.M_SHARDS])}  samples: {sum(s['samples'] for s in manifest[release.M_SHARDS])}",
        *([" ".join(f"{name}: {value}" for name, value in run_facts.items())] if run_facts else []),
        f"output: {output}  (report: {FileSystems.join(output, release.REPORT_DIR, 'index.html')})",
    ]
    return "\n".join(lines)


def run(config: RunConfig, beam_args: list[str]):
    from chimed_pipeline.pipeline import build_pipeline

    pipeline = make_pipeline(beam_args)
    build_pipeline(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineState

    from chimed_pipeline.dataflow import check_dataflow_args, job_description

    check_dataflow_args(args, PipelineOptions(beam_args))
    config = config_from_args(args)
    result = run(config, beam_args)
    description = job_description(result)
    if description is not None:  # --dry_run=True: validated offline, nothing submitted or written
        print(json.dumps(description, indent=2))
        return 0
    if result.state != PipelineState.DONE:
        print(f"pipeline ended in state {result.state}; output: {config.output}")
        return 1
    print(summarize(config.output))
    return 0
