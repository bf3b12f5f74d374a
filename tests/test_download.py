"""download / verify / publish against a local HTTP server that the test controls, faults included."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest

from chimed_pipeline import cli
from chimed_pipeline.release import PART_SUFFIX, release_files
from chimed_pipeline.transfer import HttpSource
from schemas.release import M_FILES, MANIFEST, shard_name

FAST = ["--backoff", "0", "--workers", "4"]


# --- a release to serve ---------------------------------------------------------------------------

SHARD = shard_name(0)  # every release has shard 0; the bundled sample builds just this one


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(built_release, tmp_path) -> Path:
    """A per-test copy of the bundled sample the pipeline built (conftest), so a test may damage it."""
    return Path(shutil.copytree(built_release, tmp_path / "served"))


def _listed(root: Path) -> list[str]:
    return [f.path for f in release_files(json.loads((root / MANIFEST).read_text()))]


# --- the server ------------------------------------------------------------------------------------


class ReleaseServer(http.server.ThreadingHTTPServer):
    """Serves `root` under `prefix` with single-range support and injectable faults.

    fail_500[name] = n: the next n requests for name get a 500.
    cut_at[name] = [offset, n]: the next n responses (n < 0: all) stop at byte `offset` of the file
    and drop the connection, as a flaky network or proxy does.
    redirect_base: when set, requests addressed to another host are redirected there (as the Hub's
    resolve URLs redirect to a CDN).
    """

    daemon_threads = True

    def __init__(self, root: Path, prefix: str = "/release/") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.prefix = root, prefix
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.headers_seen: list[dict] = []
        self.fail_500: dict[str, int] = {}
        self.cut_at: dict[str, list[int]] = {}
        self.redirect_base: str | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.prefix}"

    def fetched(self, name: str) -> list[str | None]:
        """The Range headers of the requests for name (None: a whole-file request)."""
        return [rng for n, rng in self.requests if n == name]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ReleaseServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if not path.startswith(server.prefix):
            self.send_error(404)
            return
        name = path[len(server.prefix):]
        with server.lock:
            server.requests.append((name, self.headers.get("Range")))
            server.headers_seen.append(dict(self.headers))
            if server.fail_500.get(name, 0) > 0:
                server.fail_500[name] -= 1
                self.send_error(500)
                return
            cut_offset = None
            cut = server.cut_at.get(name)
            if cut and cut[1] != 0:
                cut_offset, cut[1] = cut[0], cut[1] - 1
        if server.redirect_base and urllib.parse.urlsplit(server.redirect_base).netloc != self.headers["Host"]:
            self.send_response(302)
            self.send_header("Location", server.redirect_base + urllib.parse.quote(name))
            self.end_headers()
            return
        file = server.root / name
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        end = len(data) if cut_offset is None else max(start, cut_offset)
        self.wfile.write(data[start:end])
        self.close_connection = True  # with a short body, the client sees the connection drop


@contextlib.contextmanager
def serving(root: Path, prefix: str = "/release/"):
    srv = ReleaseServer(root, prefix)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server(served):
    with serving(served) as srv:
        yield srv


def download(*argv: str) -> int:
    return cli.main(["download", *argv])


def assert_mirrors(dest: Path, release: Path, names: list[str]) -> None:
    for name in names + [MANIFEST]:
        assert (dest / name).read_bytes() == (release / name).read_bytes(), name
    assert not list(dest.rglob("*" + PART_SUFFIX))


# --- download ----------------------------------------------------------------------------------------


def test_full_download_mirrors_the_release_and_a_rerun_fetches_nothing(server, served, tmp_path):
    dest = tmp_path / "dest"
    assert download(server.url, str(dest), *FAST) == 0
    assert_mirrors(dest, served, _listed(served))
    assert cli.main(["verify", str(dest)]) == 0

    server.requests.clear()
    assert download(server.url, str(dest), *FAST) == 0
    assert [name for name, _ in server.requests] == [MANIFEST]  # every file already verified: skipped


def test_interrupted_download_resumes_from_the_part_file(server, served, tmp_path):
    dest = tmp_path / "dest"
    half = (served / SHARD).stat().st_size // 2
    server.cut_at[SHARD] = [half, -1]  # the connection always dies half way through this shard
    assert download(server.url, str(dest), *FAST, "--retries", "1") == 1
    assert not (dest / SHARD).exists()
    assert (dest / (SHARD + PART_SUFFIX)).stat().st_size == half
    assert server.fetched(SHARD) == [None, f"bytes={half}-"]  # the retry resumed too

    del server.cut_at[SHARD]
    server.requests.clear()
    assert download(server.url, str(dest), *FAST) == 0
    assert sorted(name for name, _ in server.requests) == [MANIFEST, SHARD]  # completed files not refetched
    assert server.fetched(SHARD) == [f"bytes={half}-"]
    assert_mirrors(dest, served, _listed(served))


def test_connection_dropped_mid_body_is_retried_with_range_in_the_same_run(server, served, tmp_path):
    cut = 70_000
    server.cut_at[SHARD] = [cut, 1]
    assert download(server.url, str(tmp_path / "dest"), *FAST) == 0
    assert server.fetched(SHARD) == [None, f"bytes={cut}-"]
    assert_mirrors(tmp_path / "dest", served, _listed(served))


def test_server_errors_are_retried(server, served, tmp_path):
    server.fail_500[MANIFEST] = 2
    server.fail_500[SHARD] = 3
    assert download(server.url, str(tmp_path / "dest"), *FAST) == 0
    assert len(server.fetched(MANIFEST)) == 3 and len(server.fetched(SHARD)) == 4
    assert_mirrors(tmp_path / "dest", served, _listed(served))


def test_server_errors_beyond_the_retry_budget_fail_naming_the_file(server, tmp_path, caplog):
    server.fail_500[SHARD] = 10
    assert download(server.url, str(tmp_path / "dest"), *FAST, "--retries", "2") == 1
    assert SHARD in caplog.text and "500" in caplog.text
    assert not (tmp_path / "dest" / SHARD).exists()


def test_missing_files_are_not_retried_and_a_missing_manifest_is_named(server, served, tmp_path, caplog):
    (served / "README.md").unlink()
    assert download(server.url, str(tmp_path / "dest"), *FAST) == 1
    assert server.fetched("README.md") == [None]  # a 404 is an answer, not a hiccup
    assert "README.md" in caplog.text and "404" in caplog.text

    (served / MANIFEST).unlink()
    caplog.clear()
    assert download(server.url, str(tmp_path / "other"), *FAST) == 1
    assert f"{server.url}{MANIFEST}: HTTP Error 404" in caplog.text


def test_shard_corrupted_on_the_server_is_never_accepted(server, served, tmp_path, caplog):
    data = bytearray((served / SHARD).read_bytes())
    data[1000] ^= 0xFF  # same size, one bit pattern off: only the sha256 can tell
    (served / SHARD).write_bytes(bytes(data))
    dest = tmp_path / "dest"

    assert download(server.url, str(dest), *FAST) == 1
    assert SHARD in caplog.text and "sha256" in caplog.text
    assert not (dest / SHARD).exists() and not (dest / (SHARD + PART_SUFFIX)).exists()
    assert server.fetched(SHARD) == [None, None]  # fetched again once, from scratch
    others = [name for name in _listed(served) if name != SHARD]
    assert_mirrors(dest, served, others)  # the rest of the release still arrived

    caplog.clear()
    assert cli.main(["verify", str(dest)]) == 1
    assert f"{SHARD}: missing" in caplog.text


def test_a_stale_part_from_another_release_is_replaced(server, served, tmp_path):
    dest = tmp_path / "dest"
    part = dest / (SHARD + PART_SUFFIX)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # a resumable-looking prefix whose bytes are wrong
    assert download(server.url, str(dest), *FAST) == 0
    assert server.fetched(SHARD) == ["bytes=5000-", None]
    assert_mirrors(dest, served, _listed(served))


def test_a_server_sending_more_than_the_manifest_says_cannot_fill_the_disk(server, served, tmp_path, caplog):
    with open(served / SHARD, "ab") as grown:
        grown.write(b"\0" * 3_000_000)
    part = tmp_path / "x.part"
    HttpSource(server.url).fetch(SHARD, part, 1000, lambda _: None)
    assert part.stat().st_size == 1001  # one byte past the expected size: enough to know it is wrong

    assert download(server.url, str(tmp_path / "dest"), *FAST) == 1
    assert f"{SHARD}: " in caplog.text and "size" in caplog.text


def test_include_fetches_only_matching_files(server, served, tmp_path, caplog):
    dest = tmp_path / "dest"
    assert download(server.url, str(dest), *FAST, "--include", "shards/*", "--include", "README.md") == 0
    shards = [name for name in _listed(served) if name.startswith("shards/")]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        shards + ["README.md", MANIFEST]
    )
    assert cli.main(["verify", str(dest), "--include", "shards/*"]) == 0
    assert cli.main(["verify", str(dest)]) == 1
    assert "index/part-00000.parquet: missing" in caplog.text


def test_verify_names_damaged_and_missing_files_and_download_repairs_only_those(server, served, tmp_path, caplog):
    dest = tmp_path / "dest"
    assert download(server.url, str(dest), *FAST) == 0
    (dest / "README.md").write_bytes(b"edited\n")
    (dest / SHARD).unlink()
    assert cli.main(["verify", str(dest)]) == 1
    assert "README.md: size" in caplog.text and f"{SHARD}: missing" in caplog.text

    server.requests.clear()
    assert download(server.url, str(dest), *FAST) == 0
    assert sorted(name for name, _ in server.requests) == sorted([MANIFEST, "README.md", SHARD])
    assert cli.main(["verify", str(dest)]) == 0


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "shards/../../x"])
def test_manifest_with_traversal_is_refused_before_anything_is_written(server, served, tmp_path, caplog, name):
    manifest = json.loads((served / MANIFEST).read_text())
    manifest[M_FILES].append({"path": name, "bytes": 3, "sha256": _sha256(b"bad")})
    (served / MANIFEST).write_text(json.dumps(manifest))
    dest = tmp_path / "deep" / "dest"
    assert download(server.url, str(dest), *FAST) == 1
    assert repr(name) in caplog.text
    assert not dest.exists()
    assert [n for n, _ in server.requests] == [MANIFEST]


def test_symlink_in_dest_pointing_outside_is_refused(server, tmp_path, caplog):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "shards").symlink_to(outside)
    assert download(server.url, str(dest), *FAST) == 1
    assert "resolves outside" in caplog.text
    assert not any(outside.iterdir())


def test_hf_dataset_root_maps_to_resolve_urls_and_sends_the_token_to_the_hub_only(built_release, tmp_path, monkeypatch):
    prefix = "/datasets/team/chimed/resolve/refs/pr/1/"  # the client sends refs%2Fpr%2F1; it arrives decoded
    with serving(built_release, prefix) as srv:
        port = srv.server_address[1]
        srv.redirect_base = f"http://localhost:{port}{prefix}"  # a different host: stands in for the CDN
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        assert download("hf://datasets/team/chimed@refs/pr/1", str(tmp_path / "dest"), *FAST) == 0
    assert_mirrors(tmp_path / "dest", built_release, _listed(built_release))
    auth_by_host = {(h["Host"].split(":")[0], h.get("Authorization")) for h in srv.headers_seen}
    assert auth_by_host == {("127.0.0.1", "Bearer hf_test_token"), ("localhost", None)}


# --- publish ------------------------------------------------------------------------------------------


def test_publish_to_a_local_root_then_download_from_it(served, tmp_path):
    root = tmp_path / "release-root"
    assert cli.main(["publish", str(served), str(root)]) == 0
    assert_mirrors(root, served, _listed(served))

    with serving(root) as srv:
        assert download(srv.url, str(tmp_path / "over-http"), *FAST) == 0
    assert_mirrors(tmp_path / "over-http", served, _listed(served))

    assert download(str(root), str(tmp_path / "from-path"), *FAST) == 0  # a local root, through Beam
    assert_mirrors(tmp_path / "from-path", served, _listed(served))


def test_publish_refuses_a_damaged_source_and_leaves_no_manifest_behind(served, tmp_path, caplog):
    root = tmp_path / "release-root"
    assert cli.main(["publish", str(served), str(root)]) == 0
    (served / "report/stats.json").write_bytes(b'{"kept": 13}')
    assert cli.main(["publish", str(served), str(root)]) == 1
    assert "report/stats.json" in caplog.text
    assert not (root / MANIFEST).exists() and not (root / "report/stats.json").exists()
