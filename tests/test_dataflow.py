"""Dataflow without a cloud: launcher checks, the offline dry run, and the worker image's Beam version.

The dry run runs in a subprocess under a hard timeout: were `--dry_run` or the gs:// temp location
ever lost, Beam would retry GCS for minutes instead of failing.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from chimed_pipeline.commands import run as run_command
from chimed_pipeline.dataflow import SETUP_PACKAGE, is_dataflow, llm_errors, local_path_errors

REPO = Path(__file__).resolve().parents[1]
WORKER_IMAGE = "europe-docker.pkg.dev/p/chimed/worker:test"
DRY_RUN_TIMEOUT_S = 180


def parse_run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    return parser.parse_known_args(list(argv))[0]


def test_dataflow_runner_names():
    assert is_dataflow("DataflowRunner") and is_dataflow("dataflow")
    assert is_dataflow("apache_beam.runners.dataflow.dataflow_runner.DataflowRunner")
    assert not any(is_dataflow(name) for name in (None, "", "DirectRunner", "FnApiRunner"))


@pytest.mark.parametrize(
    "argv, flag",
    [
        ((), "--input is required"),  # would build the bundled sample, which lives on the launcher
        (("--input", "gs://b/in/*.jsonl", "--output", "out/here"), "--output"),
        (("--input", "data/pairs.jsonl", "--output", "gs://b/out"), "--input"),
        (("--input", "gs://b/in/*.jsonl", "--output", "gs://b/out", "--images", "/data/images"), "--images"),
        (("--input", "gs://b/in/*.jsonl", "--output", "gs://b/out", "--tm", "tm.jsonl"), "--tm"),
        (("--input", "gs://b/in/*.xml", "--output", "gs://b/out", "--file-list", "oa_file_list.csv"), "--file-list"),
        (("--input", "gs://b/in/*.xml", "--output", "gs://b/out", "--pmcids", "ids.txt"), "--pmcids"),
    ],
)
def test_dataflow_rejects_what_workers_cannot_reach(argv, flag):
    errors = local_path_errors(parse_run_args(*argv))
    assert len(errors) == 1 and flag in errors[0]


def test_dataflow_llm_key_comes_from_secret_manager():
    remote = ("--input", "gs://b/in/*.jsonl", "--output", "gs://b/out", "--llm-model", "qwen")
    assert "--llm-api-key-secret" in " ".join(llm_errors(parse_run_args(*remote), {}))
    assert llm_errors(parse_run_args(*remote, "--llm-dry-run"), {}) == []
    with_secret = parse_run_args(*remote, "--llm-api-key-secret", "projects/p/secrets/k")
    assert llm_errors(with_secret, {}) == []
    assert "--llm-base-url" in " ".join(llm_errors(with_secret, {"OPENAI_BASE_URL": "http://localhost:8000/v1"}))


def test_dataflow_accepts_remote_paths():
    args = parse_run_args("--input", "gs://b/in/*.jsonl", "s3://c/x.jsonl", "--output", "gs://b/out",
                          "--images", "gs://b/img", "--tm", "gs://b/tm/*.jsonl", "--file-list", "gs://b/oa_file_list.csv")
    assert local_path_errors(args) == []


@pytest.mark.parametrize(
    "output, temp_location, error",
    [
        ("local-out", "gs://chimed-test/tmp", "--output"),
        # An invalid bucket name ("b") would make Beam create a default bucket over the network.
        ("gs://chimed-test/out", "gs://b/tmp", "--temp_location"),
        ("gs://chimed-test/out", "", "--temp_location"),
    ],
)
def test_dataflow_run_fails_before_building(tmp_path, output, temp_location, error):
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    argv = ["--input", "gs://chimed-test/in/*.jsonl", "--output", output, "--runner=DataflowRunner",
            "--project=p", "--dry_run=True", "--no_auth"]
    args, beam_args = parser.parse_known_args(argv + ([f"--temp_location={temp_location}"] if temp_location else []))
    with pytest.raises(SystemExit, match=error):
        run_command.main(args, beam_args)


def test_dry_run_validates_the_whole_job_offline(tmp_path):
    """The full job, gs:// in and out, validated with no credentials and no network; the description
    names the worker image and the package staged from setup.py, data files included."""
    command = [
        sys.executable, "-m", "chimed_pipeline", "run",
        "--input", "gs://chimed-test/in/*.jsonl", "gs://chimed-test/pmc/**/*.xml",
        "--images", "gs://chimed-test/images", "--output", "gs://chimed-test/out",
        "--tm", "gs://chimed-test/tm/*.jsonl", "--file-list", "gs://chimed-test/oa_file_list.csv",
        "--llm-model", "qwen-max", "--llm-base-url", "https://llm.invalid/v1",
        "--llm-api-key-secret", "projects/chimed-test/secrets/llm-key",
        "--runner=DataflowRunner", "--project=chimed-test", "--region=europe-west4",
        "--temp_location=gs://chimed-test/tmp", "--dry_run=True", "--no_auth",
        f"--sdk_container_image={WORKER_IMAGE}", "--sdk_location=container",
        f"--setup_file={REPO / 'setup.py'}", "--machine_type=n2-standard-4", "--max_num_workers=8",
    ]
    # No credentials and no cloud endpoints: a stray GCS call fails (or times out) instead of succeeding.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_GCE_CHECK": "True",
           "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    description = json.loads(done.stdout[done.stdout.index("{"):])
    assert description["project"] == "chimed-test" and description["region"] == "europe-west4"
    assert description["worker_images"] == [WORKER_IMAGE]
    assert description["transforms"] > 50
    package = Path(description["staged_files"][SETUP_PACKAGE])
    with tarfile.open(package) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    data_files = {str(p.relative_to(REPO)) for d in ("chimed_pipeline", "transforms")
                  for p in (REPO / d).rglob("data/*") if p.is_file() and "__pycache__" not in p.parts}
    code = {"chimed_pipeline/pipeline.py", "transforms/write.py", "schemas/records.py"}
    assert code | data_files <= members, sorted(code | data_files - members)


def test_worker_image_uses_the_launchers_beam_version():
    """Launcher and workers must run the same Beam: setup.py's pin is the Dockerfile's base tag."""
    pinned = re.search(r'^BEAM_VERSION = "([^"]+)"', (REPO / "setup.py").read_text(), re.M).group(1)
    base = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert base.group(2) == pinned
    from apache_beam.version import __version__

    assert __version__ == pinned
    assert f"apache-beam=={pinned}" in (REPO / "requirements.lock").read_text().split()
