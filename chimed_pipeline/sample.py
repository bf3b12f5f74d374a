"""The bundled demo sample: manifests and TM ship as package data; images are drawn at run time.

`materialize_sample()` writes the images and copies the manifests into a cache folder and returns
what `run` needs as inputs, so the demo works from any working directory, offline, with no key.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import os
import shutil
import tarfile
import tempfile
from importlib import resources

from chimed_pipeline import __version__
from chimed_pipeline.sample_images import render

SAMPLE_DATA = "sample_data"
MANIFESTS = ("pairs.jsonl", "llava_qa.jsonl")
TM_FILE = "tm.jsonl"

# name -> (kind, seed, (width, height)); see the sample README for why each exists.
IMAGES = {
    "ct_abdomen.png": ("ct", 1, (640, 512)),
    "mri_brain.jpg": ("mri", 2, (560, 560)),
    "xray_chest.jpg": ("xray", 3, (600, 640)),
    "he_liver.jpg": ("histology", 4, (640, 480)),
    "us_thyroid.png": ("ultrasound", 5, (600, 480)),
    "chart_survival.png": ("chart", 6, (640, 420)),
    "fundus_dr.jpg": ("fundus", 7, (560, 560)),
    "ct_chest.png": ("ct", 8, (600, 480)),
    "he_kidney.jpg": ("histology", 9, (512, 512)),
    "us_liver.png": ("ultrasound", 10, (640, 480)),
    "xray_knee.jpg": ("xray", 11, (480, 600)),
    "mri_spine.jpg": ("mri", 12, (400, 640)),
    "chart_il6.png": ("chart", 13, (560, 400)),
    "ct_sinus.png": ("ct", 14, (512, 512)),
    "fundus_papilledema.jpg": ("fundus", 15, (600, 600)),
}
BYTE_COPIES = {"ct_abdomen_copy.png": "ct_abdomen.png"}  # exact duplicate
RESIZED_COPIES = {"mri_brain_followup.jpg": "mri_brain.jpg"}  # near duplicate: half size, JPEG q75
TOO_SMALL = "thumbnail.png"
TRUNCATED = "broken.jpg"

# PMC-style articles written for the sample (fictitious PMC99000001+), laid out as PMC serves them:
# file in sample_data -> (layout, {graphic href: (kind, seed, size, media suffix)}).
PACKAGE, DIRECTORY = "package", "directory"
ARTICLES = {
    # Legacy .nxml in PMC99000001.tar.gz, a full-size .jpg and a .gif thumbnail per figure.
    "PMC99000001.nxml": (PACKAGE, {
        "demo-lung-g001": ("ct", 21, (640, 512), ".jpg"),
        "demo-lung-g002": ("xray", 22, (560, 600), ".jpg"),
        "demo-lung-g003": ("histology", 23, (640, 480), ".jpg"),
    }),
    # OAI-PMH / JATS 1.3 form in a directory PMC99000002/ with its media beside it; Figure 4 is a
    # reprint under CC BY-NC, which the default commercial policy rejects.
    "PMC99000002.xml": (DIRECTORY, {
        "demo-thyroid-g001": ("ultrasound", 24, (600, 480), ".jpg"),
        "demo-thyroid-g002": ("ct", 25, (560, 480), ".png"),  # stands in for a fused PET/CT slice
        "demo-thyroid-g003": ("mri", 26, (512, 560), ".jpg"),
        "demo-thyroid-g004": ("histology", 27, (480, 480), ".jpg"),
    }),
}
THUMBNAIL_SIDE = 80


@dataclasses.dataclass(frozen=True)
class SampleInputs:
    root: str
    inputs: list
    tm: str
    images: str = ""  # manifests name images relative to themselves


def _encode(image, name: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if name.endswith(".png"):
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_images() -> dict[str, bytes]:
    """Every image file of the sample, by name (deterministic)."""
    from PIL import Image

    files = {name: _encode(render(kind, seed, size), name) for name, (kind, seed, size) in IMAGES.items()}
    for name, original in BYTE_COPIES.items():
        files[name] = files[original]
    for name, original in RESIZED_COPIES.items():
        image = Image.open(io.BytesIO(files[original]))
        files[name] = _encode(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS), name, 75)
    files[TOO_SMALL] = _encode(render("fundus", 16, (40, 40)), TOO_SMALL)
    files[TRUNCATED] = _encode(render("ct", 17, (512, 512)), TRUNCATED)[:700]
    return files


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz with fixed times and owners, so the same members give the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sample_articles() -> dict[str, bytes]:
    """Every file of the sample's PMC-style inputs, by path relative to the sample root."""
    package = resources.files("chimed_pipeline").joinpath(SAMPLE_DATA)
    files = {}
    for xml_name, (layout, figures) in ARTICLES.items():
        article = os.path.splitext(xml_name)[0]
        members = {f"{article}/{xml_name}": package.joinpath(xml_name).read_bytes()}
        for href, (kind, seed, size, suffix) in figures.items():
            image = render(kind, seed, size)
            members[f"{article}/{href}{suffix}"] = _encode(image, suffix)
            if layout == PACKAGE:
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                thumbnail = io.BytesIO()
                image.save(thumbnail, format="GIF")
                members[f"{article}/{href}.gif"] = thumbnail.getvalue()
        if layout == PACKAGE:
            files[f"{article}.tar.gz"] = _tar_gz(members)
        else:
            files.update(members)
    return files


def article_inputs(root: str) -> list[str]:
    """The `--input` paths of the sample's articles under `root`: packages and article directories."""
    return [
        os.path.join(root, os.path.splitext(name)[0] + (".tar.gz" if layout == PACKAGE else ""))
        for name, (layout, _) in ARTICLES.items()
    ]


def default_root() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "chimed-pipeline", f"sample-{__version__}")


def materialize_sample(root: str | None = None) -> SampleInputs:
    root = root or default_root()
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=root)  # fill aside, then swap in: no half-written sample
    os.makedirs(os.path.join(staging, "images"))
    for name, data in sample_images().items():
        with open(os.path.join(staging, "images", name), "wb") as handle:
            handle.write(data)
    for relative, data in sample_articles().items():
        os.makedirs(os.path.dirname(os.path.join(staging, relative)), exist_ok=True)
        with open(os.path.join(staging, relative), "wb") as handle:
            handle.write(data)
    package = resources.files("chimed_pipeline").joinpath(SAMPLE_DATA)
    for name in (*MANIFESTS, TM_FILE):
        with open(os.path.join(staging, name), "wb") as handle:
            handle.write(package.joinpath(name).read_bytes())
    target = os.path.join(root, "current")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return SampleInputs(
        root=target,
        inputs=[os.path.join(target, name) for name in MANIFESTS] + article_inputs(target),
        tm=os.path.join(target, TM_FILE),
    )
