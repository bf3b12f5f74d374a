"""Shared fixtures: the bundled sample built once per session, and a small pipeline runner."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_SAMPLES = SHARED / "samples"


def run_pipeline(output: Path, *extra: str) -> Path:
    """`python -m chimed_pipeline run --output OUTPUT EXTRA...`, in process, on the FnApiRunner."""
    from chimed_pipeline.commands import run as run_command

    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    args, beam_args = parser.parse_known_args(["--output", str(output), *extra])
    assert run_command.main(args, beam_args) == 0
    return output


@pytest.fixture(scope="session")
def built_release(tmp_path_factory) -> Path:
    """The bundled demo sample, built by the pipeline once for the whole session (treat as read-only)."""
    return run_pipeline(tmp_path_factory.mktemp("release") / "out")


@pytest.fixture
def shared_samples() -> Path:
    if not SHARED_SAMPLES.is_dir():
        pytest.skip(f"../shared/samples not found at {SHARED_SAMPLES} (only in the team's checkouts)")
    return SHARED_SAMPLES
