"""Pure release logic: untrusted manifest names, manifest shape, selection, retry classification, Hub checks."""
from __future__ import annotations

import hashlib
import http.client
import json
import types
import urllib.error

import pytest

from chimed_pipeline.release import ManifestError, inside, parse_manifest, release_files, select, unsafe_reason
from chimed_pipeline.transfer import ShortRead, git_blob_sha1, hf_source, hub_mismatches, is_transient
from schemas.release import M_FILES, M_SHARDS, M_VERSION, MANIFEST_VERSION, FileInfo

SHA = "a" * 64


def manifest(shards=(), files=()) -> dict:
    return {
        M_VERSION: MANIFEST_VERSION,
        M_SHARDS: [{"name": n, "samples": 1, "bytes": 1, "sha256": SHA} for n in shards],
        M_FILES: [{"path": p, "bytes": 1, "sha256": SHA} for p in files],
    }


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc/passwd",
        "shards/../../x",
        "shards/..",
        "..\\x",
        "shards\\chimed-vl-000000.tar",
        "C:/Windows/x",
        "c:x",
        "",
        ".",
        "shards//x.tar",
        "shards/./x.tar",
        "shards/",
        "x\x00.tar",
        "x\n.tar",
        "manifest.json",
        "shards/chimed-vl-000000.tar.part",
        None,
        7,
    ],
)
def test_unsafe_names_are_refused(name, tmp_path):
    assert unsafe_reason(name)
    with pytest.raises(ManifestError):
        inside(tmp_path, name)


@pytest.mark.parametrize(
    "name", ["shards/chimed-vl-000000.tar", "index/part-00000.parquet", "README.md", "report/plots/a b.png", "..x/y"]
)
def test_plain_relative_names_stay_inside(name, tmp_path):
    assert unsafe_reason(name) == ""
    assert inside(tmp_path, name) == tmp_path.resolve() / name


def test_a_symlink_leading_outside_the_destination_is_refused(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "shards").symlink_to(tmp_path)
    with pytest.raises(ManifestError, match="resolves outside"):
        inside(tmp_path / "dest", "shards/x.tar")


def test_release_files_lists_shards_then_files():
    listed = release_files(manifest(["shards/chimed-vl-000000.tar"], ["index/part-00000.parquet", "README.md"]))
    assert [f.path for f in listed] == ["shards/chimed-vl-000000.tar", "index/part-00000.parquet", "README.md"]
    assert listed[0] == FileInfo("shards/chimed-vl-000000.tar", 1, SHA)


def test_release_files_reports_every_unsafe_or_repeated_name_at_once():
    with pytest.raises(ManifestError) as error:
        release_files(manifest(["shards/../../x"], ["/etc/passwd", "README.md", "README.md"]))
    message = str(error.value)
    assert "'shards/../../x'" in message and "'/etc/passwd'" in message and "'README.md': listed twice" in message


@pytest.mark.parametrize(
    "broken",
    [
        {M_SHARDS: {"name": "x"}},
        {M_SHARDS: [{"name": "shards/x.tar", "bytes": 1, "sha256": SHA}]},  # no samples
        {M_FILES: [{"path": "x", "bytes": -1, "sha256": SHA}]},
        {M_FILES: [{"path": "x", "bytes": "1", "sha256": SHA}]},
        {M_FILES: [{"path": "x", "bytes": 1, "sha256": "abc"}]},
        {M_FILES: ["x"]},
    ],
)
def test_malformed_entries_are_refused(broken):
    with pytest.raises(ManifestError):
        release_files({M_VERSION: MANIFEST_VERSION, **broken})


def test_parse_manifest_refuses_non_json_non_objects_and_newer_versions():
    for data in (b"<html>404</html>", b"[]", json.dumps({M_VERSION: MANIFEST_VERSION + 1}).encode()):
        with pytest.raises(ManifestError):
            parse_manifest(data)
    assert parse_manifest(json.dumps(manifest()).encode())[M_VERSION] == MANIFEST_VERSION


def test_select_matches_any_glob_and_everything_without_one():
    files = release_files(manifest(["shards/chimed-vl-000000.tar"], ["index/part-00000.parquet", "README.md"]))
    assert select(files, None) == files
    assert [f.path for f in select(files, ["shards/*", "*.md"])] == ["shards/chimed-vl-000000.tar", "README.md"]
    assert select(files, ["nothing/*"]) == []


def test_hf_roots_map_to_resolve_urls(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    source = hf_source("hf://datasets/owner/name")
    assert source.location("shards/chimed-vl-000000.tar") == (
        "https://huggingface.co/datasets/owner/name/resolve/main/shards/chimed-vl-000000.tar"
    )
    assert source.token == ""
    assert hf_source("hf://datasets/owner/name@refs/pr/3").base_url.endswith("/resolve/refs%2Fpr%2F3/")
    for bad in ("hf://owner/name", "hf://models/owner/name", "hf://datasets/owner"):
        with pytest.raises(ValueError):
            hf_source(bad)


@pytest.mark.parametrize(
    "exc, transient",
    [
        (urllib.error.HTTPError("u", 500, "boom", {}, None), True),
        (urllib.error.HTTPError("u", 503, "busy", {}, None), True),
        (urllib.error.HTTPError("u", 429, "slow down", {}, None), True),
        (urllib.error.HTTPError("u", 404, "gone", {}, None), False),
        (urllib.error.HTTPError("u", 403, "no", {}, None), False),
        (urllib.error.URLError(ConnectionRefusedError()), True),
        (ConnectionResetError(), True),
        (http.client.IncompleteRead(b"", 10), True),
        (http.client.RemoteDisconnected(), True),
        (TimeoutError(), True),
        (ShortRead("1 of 2 bytes"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
    ],
)
def test_which_errors_are_retried(exc, transient):
    assert is_transient(exc) is transient


def test_hub_mismatches_compare_lfs_sha256_and_git_blob_ids(tmp_path):
    card, shard = b"# card\n", b"tar bytes"
    (tmp_path / "README.md").write_bytes(card)
    expected = [
        FileInfo("README.md", len(card), hashlib.sha256(card).hexdigest()),
        FileInfo("shards/a.tar", len(shard), hashlib.sha256(shard).hexdigest()),
    ]
    git_id = hashlib.sha1(b"blob %d\0" % len(card) + card).hexdigest()
    assert git_blob_sha1(tmp_path / "README.md") == git_id

    def repo_file(path, size, blob_id, lfs_sha=None):
        lfs = types.SimpleNamespace(sha256=lfs_sha) if lfs_sha else None
        return types.SimpleNamespace(path=path, size=size, blob_id=blob_id, lfs=lfs)

    good = [repo_file("README.md", len(card), git_id), repo_file("shards/a.tar", len(shard), "x", expected[1].sha256)]
    assert hub_mismatches(tmp_path, expected, good) == []
    bad = [repo_file("README.md", len(card), "0" * 40), repo_file("shards/a.tar", len(shard), "x", "b" * 64)]
    assert [p.path for p in hub_mismatches(tmp_path, expected, bad)] == ["README.md", "shards/a.tar"]
    missing = hub_mismatches(tmp_path, expected, good[:1])
    assert [str(p) for p in missing] == ["shards/a.tar: not on the Hub after the commit"]
