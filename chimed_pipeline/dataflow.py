"""Launcher-side checks and the offline job description for Dataflow runs.

A Dataflow job that fails at worker start-up (a local path no worker can see, the bundled sample
that lives on the launcher's disk) costs the provisioning time and money before the error shows.
These checks run before the pipeline is built; `--dry_run=True` then builds and validates the whole
job without credentials or network, and `job_description` says what would be submitted.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Mapping

from chimed_pipeline.llm import API_KEY_ENV, BASE_URL_ENV

DATAFLOW_RUNNERS = frozenset({"dataflowrunner", "dataflow"})
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")
# Dependencies Beam stages for workers: the package built from --setup_file, and the launcher's pip freeze.
SETUP_PACKAGE = "workflow.tar.gz"


def is_dataflow(runner: str | None) -> bool:
    """True for `DataflowRunner`, `dataflow` and the runner's dotted class path."""
    return bool(runner) and runner.rsplit(".", 1)[-1].lower() in DATAFLOW_RUNNERS


def local_path_errors(args: argparse.Namespace) -> list[str]:
    """What a Dataflow worker could not read or write: local paths and the launcher's bundled sample."""
    if not args.input:
        return ["--input is required with Dataflow (the bundled sample is on this machine, not on the workers)"]
    named = [("--input", path) for path in args.input] + [("--tm", path) for path in args.tm]
    named.append(("--output", args.output))
    optional = (("--images", args.images), ("--file-list", args.file_list), ("--pmcids", args.pmcids))
    named += [(flag, path) for flag, path in optional if path]
    return [f"{flag} {path!r} is a local path; Dataflow workers need gs:// (or another remote filesystem)"
            for flag, path in named if not _URI.match(path)]


def llm_errors(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    """The launcher's environment does not reach the workers: the key must come from Secret Manager
    and a custom endpoint from --llm-base-url."""
    if not args.llm_model or args.llm_dry_run:
        return []
    errors = []
    if not args.llm_api_key_secret:
        errors.append(f"--llm-model on Dataflow needs --llm-api-key-secret (workers never see {API_KEY_ENV})")
    if not args.llm_base_url and environ.get(BASE_URL_ENV):
        errors.append(f"pass --llm-base-url: {BASE_URL_ENV} in this shell does not reach the workers")
    return errors


def staging_errors(options) -> list[str]:
    """Without a valid gs:// temp or staging location Beam goes looking for (or creating) a default
    bucket over the network, retrying for minutes: demand one instead (a dry run included)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    cloud = options.view_as(GoogleCloudOptions)
    validator = PipelineOptionsValidator(options, runner=None)
    valid = [name for name in ("temp_location", "staging_location") if not validator.validate_gcs_path(cloud, name)]
    return [] if valid else ["--temp_location=gs://BUCKET/PATH is required with Dataflow (a valid bucket name)"]


def check_dataflow_args(args: argparse.Namespace, options) -> None:
    """Fail before anything is built or staged when a Dataflow job could not work; `options` are
    Beam's PipelineOptions."""
    from apache_beam.options.pipeline_options import StandardOptions

    if is_dataflow(options.view_as(StandardOptions).runner):
        errors = local_path_errors(args) + llm_errors(args, os.environ) + staging_errors(options)
        if errors:
            raise SystemExit("error: " + "\nerror: ".join(errors))


def job_description(result) -> dict | None:
    """What a `--dry_run=True` Dataflow run would submit: job name, worker images, staged files,
    transform count. None for any other result (other runners, real submissions)."""
    job = getattr(result, "job", None)
    if job is None or getattr(job, "proto_pipeline", None) is None:
        return None
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.utils import proto_utils

    images, staged = set(), {}
    for environment in job.proto_pipeline.components.environments.values():
        if environment.urn == common_urns.environments.DOCKER.urn:
            payload = proto_utils.parse_Bytes(environment.payload, beam_runner_api_pb2.DockerPayload)
            images.add(payload.container_image)
        for artifact in environment.dependencies:
            if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
                continue
            role = proto_utils.parse_Bytes(artifact.role_payload, beam_runner_api_pb2.ArtifactStagingToRolePayload)
            local = proto_utils.parse_Bytes(artifact.type_payload, beam_runner_api_pb2.ArtifactFilePayload)
            staged[role.staged_name] = local.path
    options = job.options.get_all_options(drop_default=True)
    return {
        "job_name": job.proto.name,
        "project": options.get("project", ""),
        "region": options.get("region", ""),
        "worker_images": sorted(images),
        "staged_files": dict(sorted(staged.items())),
        "transforms": len(job.proto_pipeline.components.transforms),
    }
