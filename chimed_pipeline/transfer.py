"""Moving a release: fetch one from a release root into a local directory, or publish one to a root.

A release root is `https://` / `http://`, `hf://datasets/OWNER/NAME[@REVISION]` (Hugging Face resolve
URLs), or anything Beam's FileSystems opens (`gs://`, `s3://`, a local path). Every file is written to
`NAME.part`, resumed from there (HTTP Range, or a seek on Beam file systems), checked against the
manifest's size and sha256, and only then renamed to NAME, so a file under its final name is always a
verified one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

from tqdm import tqdm

from chimed_pipeline import __version__
from chimed_pipeline.release import (
    PART_SUFFIX,
    ManifestError,
    Problem,
    check_copy,
    hash_stream,
    inside,
    mismatch,
    parse_manifest,
    release_files,
    select,
    write_atomically,
)
from schemas.release import MANIFEST, FileInfo

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HF_DATASET = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>.+))?/?$")
HF_DEFAULT_REVISION = "main"
T = TypeVar("T")
Progress = Callable[[int], None]  # bytes added (negative when a partial file is thrown away)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # after the first try; reset whenever a try moved a file forward
    initial_delay: float = 0.5  # seconds, doubled each retry
    max_delay: float = 30.0

    def delay(self, retry: int) -> float:
        # Jittered, so parallel workers that failed together do not come back together.
        return min(self.max_delay, self.initial_delay * 2**retry) * random.uniform(0.5, 1.0)


class FetchError(Exception):
    """A file could not be fetched or stayed wrong; the message names it."""


class ShortRead(Exception):
    """The connection ended before the whole file arrived (a close-delimited body cut short)."""


class Cancelled(Exception):
    pass


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: server errors, throttling, resets, timeouts, truncated bodies."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(
        exc, (ShortRead, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
    )


def retrying(
    policy: RetryPolicy, what: str, call: Callable[[], T], progressed: Callable[[], bool] = lambda: False
) -> T:
    """call() until it succeeds; transient errors are retried with backoff, the rest raised at once.

    `progressed()` is asked after each failure; True (the try moved a file forward) restores the budget.
    """
    retry = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if progressed():
                retry = 0
            if not is_transient(exc) or retry >= policy.retries:
                raise
            delay = policy.delay(retry)
            log.info("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            retry += 1


class Source(Protocol):
    """A release root to read from."""

    def location(self, name: str) -> str: ...

    def read(self, name: str) -> bytes: ...

    def fetch(self, name: str, part: Path, size: int, on_bytes: Progress) -> None:
        """Append the rest of `name` to `part`, from part's current size (restarting it if resuming fails).

        At most one byte beyond the expected `size` is kept: enough to tell the file is wrong, and a
        server streaming without end cannot fill the disk.
        """


class _SameHostAuthRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, sending Authorization only to the host it was meant for, never to a CDN."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        same_host = urllib.parse.urlsplit(newurl).netloc == urllib.parse.urlsplit(req.full_url).netloc
        if new is not None and auth and same_host:
            new.add_unredirected_header("Authorization", auth)
        return new


@dataclasses.dataclass
class HttpSource:
    base_url: str
    token: str = ""  # sent as a bearer token, to the base URL's host only
    timeout: float = 60.0  # seconds without a byte before a connection counts as dead

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/") + "/"
        self._opener = urllib.request.build_opener(_SameHostAuthRedirects())

    def location(self, name: str) -> str:
        return self.base_url + urllib.parse.quote(name)

    def _open(self, name: str, offset: int = 0) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.location(name), headers={"User-Agent": f"chimed-pipeline/{__version__}"})
        if self.token:
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        return self._opener.open(request, timeout=self.timeout)

    def read(self, name: str) -> bytes:
        with self._open(name) as response:
            return response.read()

    def fetch(self, name: str, part: Path, size: int, on_bytes: Progress) -> None:
        offset = part.stat().st_size if part.exists() else 0
        try:
            response = self._open(name, offset)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing after offset: the part is whole (or too long); verify decides
                return
            raise
        with response:
            if offset and not _resumes_at(response, offset):
                on_bytes(-offset)  # the server sent the whole file instead
                offset = 0
            with open(part, "ab" if offset else "wb") as out:
                _copy(response, out, on_bytes, limit=size + 1 - offset)


def _resumes_at(response: http.client.HTTPResponse, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _copy(source, out, on_bytes: Progress, digest=None, limit: int | None = None) -> int:
    copied = 0
    while limit is None or copied < limit:
        chunk = source.read(CHUNK if limit is None else min(CHUNK, limit - copied))
        if not chunk:
            break
        out.write(chunk)
        if digest is not None:
            digest.update(chunk)
        copied += len(chunk)
        on_bytes(len(chunk))
    return copied


def _beam():
    # Imported on use: Beam takes a second or two to import, and http/hf downloads never need it.
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems, CompressionTypes.UNCOMPRESSED  # never AUTO: a release's *.gz must stay as it is


@dataclasses.dataclass
class BeamSource:
    root: str  # gs://bucket/release, s3://bucket/release, or a local directory

    def location(self, name: str) -> str:
        file_systems, _ = _beam()
        return file_systems.join(self.root, name)

    def read(self, name: str) -> bytes:
        file_systems, raw = _beam()
        with file_systems.open(self.location(name), compression_type=raw) as stream:
            return stream.read()

    def fetch(self, name: str, part: Path, size: int, on_bytes: Progress) -> None:
        file_systems, raw = _beam()
        offset = part.stat().st_size if part.exists() else 0
        with file_systems.open(self.location(name), compression_type=raw) as stream:
            stream.seek(offset)
            with open(part, "ab") as out:
                _copy(stream, out, on_bytes, limit=size + 1 - offset)


def hf_source(root: str, timeout: float = 60.0) -> HttpSource:
    """`hf://datasets/OWNER/NAME[@REVISION]` as its resolve URL; HF_ENDPOINT and HF_TOKEN honoured."""
    match = HF_DATASET.match(root)
    if not match:
        raise ValueError(f"{root!r}: expected hf://datasets/OWNER/NAME[@REVISION]")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    revision = urllib.parse.quote(match["revision"] or HF_DEFAULT_REVISION, safe="")  # refs/pr/1 → refs%2Fpr%2F1
    url = f"{endpoint}/datasets/{match['repo']}/resolve/{revision}"
    return HttpSource(url, token=os.environ.get("HF_TOKEN", ""), timeout=timeout)


def open_source(root: str, timeout: float = 60.0) -> Source:
    """The reader for a release root; `timeout` (seconds without a byte) applies to HTTP."""
    scheme = urllib.parse.urlsplit(root).scheme
    if scheme in ("http", "https"):
        return HttpSource(root, timeout=timeout)
    if scheme == "hf":
        return hf_source(root, timeout)
    if scheme in ("gs", "s3") or "://" not in root:
        return BeamSource(root)
    raise ValueError(f"{root!r}: unsupported release root (https, http, hf://datasets/..., gs, s3, or a path)")


@dataclasses.dataclass
class DownloadReport:
    fetched: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # already complete and verified
    failed: list[Problem] = dataclasses.field(default_factory=list)


class _ByteCounter:
    """A tqdm bar in bytes, safe to update from the worker threads, that also carries the stop signal."""

    def __init__(self, total: int, show: bool) -> None:
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=None if show else True)
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def __call__(self, count: int) -> None:
        if self.stop.is_set():
            raise Cancelled()
        with self._lock:
            self._bar.update(count)

    def close(self) -> None:
        self._bar.close()


def _fetch_part(source: Source, entry: FileInfo, part: Path, policy: RetryPolicy, on_bytes: Progress) -> None:
    """Bring `part` up to the manifest's size, resuming after every transient failure."""
    sizes = [part.stat().st_size if part.exists() else 0]

    def attempt() -> None:
        source.fetch(entry.path, part, entry.bytes, on_bytes)
        size = part.stat().st_size
        if size < entry.bytes:
            raise ShortRead(f"{size} of {entry.bytes} bytes")

    def progressed() -> bool:
        size = part.stat().st_size if part.exists() else 0
        moved, sizes[0] = size > sizes[0], size
        return moved

    retrying(policy, entry.path, attempt, progressed)


def download_file(source: Source, dest: Path, entry: FileInfo, policy: RetryPolicy, on_bytes: Progress) -> bool:
    """Fetch one file to its place under dest, verified; False when a verified copy was already there.

    A resumed part that fails verification may hold bytes of an older release, so the file is fetched
    once more from scratch; if that is wrong too, the part is removed and FetchError names the file.
    """
    target = inside(dest, entry.path)
    stale = mismatch(target, entry)
    if not stale:
        on_bytes(entry.bytes)
        return False
    if stale != "missing":
        log.warning("%s: %s; replacing it", entry.path, stale)
        target.unlink()  # a name under dest stays a verified file, whatever happens next
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    if part.exists():
        on_bytes(part.stat().st_size)
    for fresh in (False, True):
        if fresh and part.exists():
            on_bytes(-part.stat().st_size)
            part.unlink()
        try:
            _fetch_part(source, entry, part, policy, on_bytes)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise FetchError(f"{source.location(entry.path)}: {exc}") from exc
        problem = mismatch(part, entry)
        if not problem:
            os.replace(part, target)
            return True
        log.warning("%s: %s%s", entry.path, problem, "" if fresh else "; fetching it again from scratch")
    part.unlink()
    raise FetchError(f"{source.location(entry.path)}: {problem} (fetched twice; not kept)")


def download_release(
    root: str,
    dest: Path,
    include: Sequence[str] = (),
    workers: int = 8,
    policy: RetryPolicy = RetryPolicy(),
    timeout: float = 60.0,
    show_progress: bool = True,
) -> DownloadReport:
    """Mirror the release at `root` into `dest`: its manifest, then every listed file, verified.

    Raises ManifestError (before anything is written) when the manifest is unusable or names an unsafe
    path; per-file failures are collected in the report, so one bad shard does not stop the rest.
    """
    source = open_source(root, timeout)
    try:
        manifest_bytes = retrying(policy, MANIFEST, lambda: source.read(MANIFEST))
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{source.location(MANIFEST)}: {exc}") from exc
    files = select(release_files(parse_manifest(manifest_bytes)), include)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in files:
        inside(dest, entry.path)  # symlinks already in dest can point outside: refuse before any transfer
    write_atomically(dest / MANIFEST, manifest_bytes)  # so `verify` can name what is missing after a failure

    report = DownloadReport()
    counter = _ByteCounter(sum(f.bytes for f in files), show_progress)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="download")
    try:
        futures = {pool.submit(download_file, source, dest, entry, policy, counter): entry for entry in files}
        for future, entry in futures.items():
            try:
                (report.fetched if future.result() else report.skipped).append(entry.path)
            except FetchError as exc:
                report.failed.append(Problem(entry.path, str(exc)))
    except BaseException:
        counter.stop.set()  # Ctrl-C: workers stop at their next chunk; parts stay for the next run
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        counter.close()
    return report


# --- publish ------------------------------------------------------------------------------------


def _copy_verified(src: str, dst: str, entry: FileInfo) -> str:
    """Copy one file between Beam paths, check what was read against the manifest, then read back dst."""
    file_systems, raw = _beam()
    digest = hashlib.sha256()
    with file_systems.open(src, compression_type=raw) as reader:
        with file_systems.create(dst, compression_type=raw) as writer:
            size = _copy(reader, writer, lambda _: None, digest)
    if size != entry.bytes or digest.hexdigest() != entry.sha256:
        file_systems.delete([dst])
        return f"source {src} does not match the manifest (size {size}, sha256 {digest.hexdigest()}); not published"
    with file_systems.open(dst, compression_type=raw) as stream:
        readback = hash_stream(hashlib.sha256(), stream).hexdigest()
    if readback != entry.sha256:
        return f"{dst} read back with sha256 {readback}, expected {entry.sha256}"
    return ""


def publish_release(src: str, dest: str, workers: int = 4) -> list[Problem]:
    """Copy the release at `src` to the release root `dest`; the problems (none means published).

    Every listed file is checked against the manifest as it is read and again as read back from dest.
    A manifest already at dest is removed first and the new one written last, so a reader of dest
    never sees a manifest whose files are not all there, even after a failed publish.
    """
    if dest.startswith("hf://"):
        return _publish_to_hub(src, dest)
    file_systems, raw = _beam()
    manifest_bytes = BeamSource(src).read(MANIFEST)
    files = release_files(parse_manifest(manifest_bytes))
    manifest_path = file_systems.join(dest, MANIFEST)
    if file_systems.exists(manifest_path):
        file_systems.delete([manifest_path])

    def publish(entry: FileInfo) -> str:
        return _copy_verified(file_systems.join(src, entry.path), file_systems.join(dest, entry.path), entry)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="publish") as pool:
        details = list(pool.map(publish, files))
    problems = [Problem(f.path, d) for f, d in zip(files, details) if d]
    if problems:
        return problems
    with file_systems.create(manifest_path, compression_type=raw) as writer:
        writer.write(manifest_bytes)
    with file_systems.open(manifest_path, compression_type=raw) as stream:
        if stream.read() != manifest_bytes:
            return [Problem(MANIFEST, f"{manifest_path} read back different")]
    return []


def git_blob_sha1(path: Path) -> str:
    """The id git (and so the Hub, for files stored outside LFS) gives a file's content."""
    with open(path, "rb") as stream:
        return hash_stream(hashlib.sha1(f"blob {path.stat().st_size}\0".encode()), stream).hexdigest()


def hub_mismatches(root: Path, expected: Sequence[FileInfo], reported: Sequence) -> list[Problem]:
    """Compare the Hub's paths-info against what was uploaded.

    LFS (and Xet) files: the Hub's LFS oid is the content's sha256, compared with the manifest's.
    Small files kept in git: the blob id is git's sha1 of the content, compared with the local file's.
    `reported` holds huggingface_hub RepoFile objects (path, size, blob_id, lfs.sha256).
    """
    by_path = {info.path: info for info in reported}
    problems = []
    for entry in expected:
        info = by_path.get(entry.path)
        if info is None:
            problems.append(Problem(entry.path, "not on the Hub after the commit"))
        elif info.size != entry.bytes:
            problems.append(Problem(entry.path, f"Hub reports {info.size} bytes, expected {entry.bytes}"))
        elif info.lfs is not None and info.lfs.sha256 != entry.sha256:
            problems.append(Problem(entry.path, f"Hub LFS sha256 {info.lfs.sha256}, expected {entry.sha256}"))
        elif info.lfs is None and info.blob_id != git_blob_sha1(root / entry.path):
            problems.append(Problem(entry.path, f"Hub blob id {info.blob_id} differs from the local file's"))
    return problems


def _publish_to_hub(src: str, dest: str) -> list[Problem]:
    """Upload a local release to a Hub dataset repo in one commit, then check the Hub's checksums."""
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError as exc:
        raise RuntimeError("publishing to hf:// needs huggingface_hub: pip install 'chimed-pipeline[hub]'") from exc
    match = HF_DATASET.match(dest)
    if not match:
        raise ValueError(f"{dest!r}: expected hf://datasets/OWNER/NAME[@REVISION]")
    if "://" in src:
        raise ValueError("publishing to hf:// uploads from a local directory; download the release first")
    root = Path(src)
    manifest_bytes = (root / MANIFEST).read_bytes()
    files = release_files(parse_manifest(manifest_bytes))
    problems = check_copy(root, files)  # never upload a copy that does not match its own manifest
    if problems:
        return problems
    repo, revision = match["repo"], match["revision"] or HF_DEFAULT_REVISION
    api = HfApi()  # token from HF_TOKEN or `hf auth login`
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    if revision != HF_DEFAULT_REVISION:
        api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True)
    operations = [CommitOperationAdd(f.path, str(root / f.path)) for f in files]
    operations.append(CommitOperationAdd(MANIFEST, str(root / MANIFEST)))  # same commit: readers see all or nothing
    commit = api.create_commit(
        repo, operations, commit_message=f"Publish release ({len(files)} files)", repo_type="dataset", revision=revision
    )
    reported = api.get_paths_info(repo, [f.path for f in files] + [MANIFEST], repo_type="dataset", revision=commit.oid)
    manifest = FileInfo(MANIFEST, len(manifest_bytes), hashlib.sha256(manifest_bytes).hexdigest())
    return hub_mismatches(root, files + [manifest], reported)

