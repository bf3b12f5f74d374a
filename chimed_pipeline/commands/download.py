"""`download SOURCE DEST`: fetch a released dataset, resumably and in parallel, and verify every file.

Exit status 0 when DEST holds a verified copy of everything selected; 1 when the manifest was unusable
or any file could not be fetched intact (each one named); rerunning resumes where it stopped.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from chimed_pipeline.release import ManifestError
from chimed_pipeline.transfer import FetchError, RetryPolicy, download_release

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument(
        "source",
        help="release root holding manifest.json: https://..., http://..., gs://..., s3://..., a local path, "
        "or hf://datasets/OWNER/NAME[@REVISION] (HF_TOKEN is sent when set)",
    )
    parser.add_argument("dest", type=Path, help="local directory; it mirrors the release's layout")
    parser.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="fetch only files whose release path matches (repeatable; `*` also matches `/`), e.g. 'shards/*'",
    )
    parser.add_argument("--workers", type=int, default=8, help="parallel transfers (default 8)")
    parser.add_argument("--retries", type=int, default=5, help="retries per file after a transient error (default 5)")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without a byte before retrying (HTTP)")


def main(args: argparse.Namespace) -> int:
    policy = RetryPolicy(retries=args.retries, initial_delay=args.backoff)
    try:
        report = download_release(args.source, args.dest, args.include or (), args.workers, policy, args.timeout)
    except (ManifestError, FetchError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 1
    print(
        f"{args.dest}: {len(report.fetched)} files fetched, {len(report.skipped)} already verified, "
        f"{len(report.failed)} failed"
    )
    for problem in report.failed:
        log.error("%s", problem)
    if report.failed:
        log.error("nothing unverified was kept; run the same command again to retry (partial files resume)")
    return 1 if report.failed else 0
