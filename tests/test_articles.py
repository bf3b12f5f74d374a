"""transforms.articles: packages, article directories and bare XML -> Records and rejected IndexRows."""
import io
import json
import os
import posixpath
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jats_fixtures import EXPECTED, SAMPLES, entity_bomb, fig, image_bytes, legacy_article, oai_article
from schemas import IndexRow, Reason, Record, Stage, Status
from transforms.articles import ArticleSummary, FileAccess, media_candidates, pmcid_from_name, read_article_input
from transforms.filelist import ArticleSelection, FileListEntry
from transforms.licenses import CC_BY, CC_BY_NC, UNKNOWN, LicensePolicy


def split(outputs):
    outputs = list(outputs)
    records = [o for o in outputs if isinstance(o, Record)]
    rejected = [o for o in outputs if isinstance(o, IndexRow)]
    summaries = [o for o in outputs if isinstance(o, ArticleSummary)]
    assert len(records) + len(rejected) + len(summaries) == len(outputs)
    return records, rejected, summaries


class MemoryFiles:
    """A FileAccess over a dict of paths (like gs:// objects); `open` gives one-way streams only."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.opened: list[str] = []

    def access(self) -> FileAccess:
        return FileAccess(open=self.open, exists=self.objects.__contains__, list_dir=self.list_dir,
                          is_dir=lambda path: any(p.startswith(path.rstrip("/") + "/") for p in self.objects))

    def open(self, path: str):
        self.opened.append(path)
        if path not in self.objects:
            raise FileNotFoundError(path)
        return OneWayStream(self.objects[path])

    def list_dir(self, path: str) -> list[str]:
        return sorted(p for p in self.objects if posixpath.dirname(p) == path.rstrip("/"))


class OneWayStream(io.RawIOBase):
    """Readable, not seekable: what a network object store hands out."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# --- A legacy package: .nxml + a .gif thumbnail and a full-size .jpg per figure -----------------------

PACKAGE_BODY = (
    '<sec><p>The chest CT shows a nodule (<xref ref-type="fig" rid="F1">Figure 1</xref>). '
    'MRI confirmed it (<xref rid="F1 F2" ref-type="fig">Figures 1 and 2</xref>).</p></sec>'
)
PACKAGE_FIGURES = (
    fig("F1", "Figure 1", "<p>Axial chest CT: a 9 mm nodule in the right upper lobe.</p>", "pkg-1")
    + fig("F2", "Figure 2", "<title>Brain MRI</title><p>T<sub>2</sub>-weighted image.</p>", "pkg-2")
    + fig("F3", "Figure 3", "<p>Only a thumbnail was shipped.</p>", "pkg-3")
    + fig("F4", "Figure 4", "<p>The image is a symlink or outside the package.</p>", "pkg-4")
    + fig("F5", "", "", "pkg-5")
)


def tar_bytes(members: list[tuple[str, bytes]], links: tuple[tuple[str, str], ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


def legacy_package() -> bytes:
    members = [("PMC7000001/", b"")]  # a regular member with a trailing slash name is skipped too
    for number in (1, 2):
        members += [(f"PMC7000001/pkg-{number}.gif", image_bytes((16, 12), "GIF")),
                    (f"PMC7000001/pkg-{number}.jpg", image_bytes((64, 48), "JPEG", shade=number * 40))]
    members += [
        ("PMC7000001/pkg-3.gif", image_bytes((16, 12), "GIF")),
        ("../pkg-4.jpg", image_bytes((64, 48), "JPEG")),
        ("/tmp/pkg-4.jpg", image_bytes((64, 48), "JPEG")),
        ("PMC7000001/pkg-5.jpg", image_bytes((64, 48), "JPEG")),
        ("PMC7000001/article.pdf", b"%PDF-1.4"),
        ("PMC7000001/PMC7000001.nxml", legacy_article("7000001", body=PACKAGE_BODY, floats=PACKAGE_FIGURES)),
    ]
    return tar_bytes(members, links=(("PMC7000001/pkg-4.jpg", "/etc/passwd"),))


def test_package_records_take_the_full_size_jpg_never_the_gif(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = MemoryFiles({"gs://bucket/oa_package/PMC7000001.tar.gz": legacy_package()})
    records, rejected, summaries = split(
        read_article_input("gs://bucket/oa_package/PMC7000001.tar.gz", storage.access()))
    assert list(tmp_path.iterdir()) == []  # nothing extracted anywhere near us
    assert [r.id for r in records] == ["PMC7000001_F1", "PMC7000001_F2"]
    first = records[0]
    assert first.caption == "Axial chest CT: a 9 mm nodule in the right upper lobe."
    assert first.caption_en == "" and first.label == "Figure 1"
    assert first.inline_mentions_en == ["The chest CT shows a nodule (Figure 1).",
                                        "MRI confirmed it (Figures 1 and 2)."]
    assert first.source_file == "PMC7000001.tar.gz"
    source = first.source
    assert (source.pmcid, source.pmid, source.figure_id, source.image, source.license, source.license_url,
            source.title, source.journal, source.year) == (
        "PMC7000001", "31000001", "F1", "PMC7000001/pkg-1.jpg", CC_BY, "http://creativecommons.org/licenses/by/4.0/",
        "Imaging findings in a test cohort", "Journal of Test Radiology", "2021")
    image = Image.open(io.BytesIO(first.image_bytes))
    assert (image.format, image.size) == ("JPEG", (64, 48))
    assert records[1].caption == "Brain MRI. T2-weighted image."
    assert records[1].inline_mentions_en == ["MRI confirmed it (Figures 1 and 2)."]

    by_id = {row.id: row for row in rejected}
    assert set(by_id) == {"PMC7000001_F3", "PMC7000001_F4", "PMC7000001_F5"}
    assert all(row.status == Status.REJECTED.value for row in rejected)
    assert (by_id["PMC7000001_F3"].stage, by_id["PMC7000001_F3"].reason) == (Stage.IMAGE.value,
                                                                             Reason.MISSING_IMAGE.value)
    assert "only the .gif thumbnail" in by_id["PMC7000001_F3"].detail
    assert by_id["PMC7000001_F4"].reason == Reason.MISSING_IMAGE.value  # symlink and ../ members ignored
    assert (by_id["PMC7000001_F5"].stage, by_id["PMC7000001_F5"].reason) == (Stage.INGEST.value,
                                                                             Reason.EMPTY_CAPTION.value)
    assert "graphical abstract" in by_id["PMC7000001_F5"].detail
    assert summaries == [ArticleSummary("PMC7000001.tar.gz", "PMC7000001", 5)]


def test_unreadable_packages_get_one_row_each():
    package = legacy_package()
    storage = MemoryFiles({
        "in/PMC7000002.tar.gz": package[: len(package) // 2],  # truncated download
        "in/garbage.tar.gz": b"this is not gzip",
        "in/PMC7000003.tar.gz": tar_bytes([("PMC7000003/readme.txt", b"no article here")]),
    })
    outputs = [list(read_article_input(path, storage.access())) for path in sorted(storage.objects)]
    rows = [row for output in outputs for row in output]
    assert [(row.id, row.stage, row.reason, row.source_file) for row in rows] == [
        ("PMC7000002", "ingest", "unreadable_package", "PMC7000002.tar.gz"),
        ("PMC7000003", "ingest", "unreadable_package", "PMC7000003.tar.gz"),
        ("garbage.tar.gz", "ingest", "unreadable_package", "garbage.tar.gz"),
    ]
    assert all(isinstance(row, IndexRow) and row.detail for row in rows)
    assert "no .nxml or .xml" in rows[1].detail


def test_malformed_xml_in_a_package_is_one_row_with_the_pmcid_it_names():
    broken = legacy_article("7000004", floats=PACKAGE_FIGURES).replace(b"</body>", b"")
    storage = MemoryFiles({"in/pkg.tar.gz": tar_bytes([("x/x.nxml", broken)])})
    row, = read_article_input("in/pkg.tar.gz", storage.access())
    assert (row.id, row.pmcid, row.stage, row.reason) == ("PMC7000004", "PMC7000004", "ingest", "malformed_xml")
    assert row.detail.startswith("XML syntax error")


# --- Article directories and bare XML (PMC Cloud Service form) ---------------------------------------------


def write_article_dir(directory: Path, xml_name: str, xml: bytes, media: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / xml_name).write_bytes(xml)
    for name, data in media.items():
        (directory / name).write_bytes(data)
    return directory


OAI_FLOATS = (
    fig("F1", "Figure 1", "<p>FDG PET/CT: hypermetabolic mediastinal node.</p>", "oai-g1")
    + fig("F2", "Figure 2", "<p>Ultrasound of the liver.</p>", "oai-g2.tif")
    + fig("F3", "Figure 3", "<p>H&amp;E stain, x200.</p>", "oai-g3")
)


def test_directory_with_namespaced_oai_xml_and_media_beside_it(tmp_path):
    directory = write_article_dir(tmp_path / "PMC7000005.1", "PMC7000005.1.xml", oai_article("7000005", floats=OAI_FLOATS), {
        "oai-g1.gif": image_bytes((16, 16), "GIF"),
        "oai-g1.png": image_bytes((80, 60), "PNG"),
        "oai-g2.tif": image_bytes((40, 30), "TIFF"),
        "oai-g2.jpg": image_bytes((40, 30), "JPEG"),
    })
    records, rejected, summaries = split(read_article_input(str(directory)))
    assert [(r.id, r.source.image, Image.open(io.BytesIO(r.image_bytes)).format) for r in records] == [
        ("PMC7000005_F1", "oai-g1.png", "PNG"),
        ("PMC7000005_F2", "oai-g2.tif", "TIFF"),  # an href with a full-size extension is taken as written
    ]
    assert records[0].source_file == "PMC7000005.1.xml"
    row, = rejected
    assert (row.id, row.reason, row.caption) == ("PMC7000005_F3", "missing_image", "H&E stain, x200.")
    assert summaries == [ArticleSummary("PMC7000005.1.xml", "PMC7000005", 3)]


def test_bare_xml_file_with_media_beside_it(tmp_path):
    write_article_dir(tmp_path, "article.nxml", legacy_article("7000006", floats=OAI_FLOATS), {
        "oai-g1.jpg": image_bytes((30, 30), "JPEG"), "oai-g1.tiff": image_bytes((30, 30), "TIFF"),
        "oai-g3.jpeg": image_bytes((30, 30), "JPEG"),
    })
    records, rejected, _ = split(read_article_input(str(tmp_path / "article.nxml")))
    assert [(r.id, r.source.image) for r in records] == [("PMC7000006_F1", "oai-g1.jpg"),
                                                         ("PMC7000006_F3", "oai-g3.jpeg")]
    assert [row.id for row in rejected] == ["PMC7000006_F2"]


def test_entity_bomb_file_is_one_malformed_row(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_bytes(entity_bomb(levels=10))
    row, = read_article_input(str(path))
    assert (row.id, row.reason, row.source_file) == ("PMC109", "malformed_xml", "bomb.xml")


def test_article_without_figures_is_counted():
    storage = MemoryFiles({"d/PMC7000007.xml": oai_article("7000007", body="<p>No figures.</p>")})
    assert list(read_article_input("d/PMC7000007.xml", storage.access())) == [
        ArticleSummary("PMC7000007.xml", "PMC7000007", 0)]


# --- Selection and the file list --------------------------------------------------------------------------


def test_pmcids_skip_packages_without_opening_them():
    storage = MemoryFiles({"in/PMC7000001.tar.gz": legacy_package()})
    selection = ArticleSelection(pmcids=frozenset({"PMC1"}))
    assert list(read_article_input("in/PMC7000001.tar.gz", storage.access(), selection)) == [
        ArticleSummary("PMC7000001.tar.gz", "PMC7000001", skipped="not listed in --pmcids")]
    assert storage.opened == []
    # A name without a PMCID is read, then skipped by the PMCID inside.
    storage = MemoryFiles({"in/article.xml": oai_article("7000008", floats=OAI_FLOATS)})
    summary, = read_article_input("in/article.xml", storage.access(), selection)
    assert summary == ArticleSummary("article.xml", "PMC7000008", 3, "not listed in --pmcids")


def test_file_list_decides_the_license_only_where_the_xml_says_nothing():
    storage = MemoryFiles({
        "in/PMC7000009.xml": oai_article("7000009", floats=OAI_FLOATS, permissions=""),
        "in/PMC7000010.xml": oai_article("7000010", floats=OAI_FLOATS),
        "in/oai-g1.png": image_bytes((20, 20), "PNG"),
    })
    file_list = {"PMC7000009": FileListEntry(CC_BY_NC, "cite", "999", "x"),
                 "PMC7000010": FileListEntry(CC_BY_NC, "cite", "999", "x")}
    selection = ArticleSelection(file_list=file_list)
    first = next(read_article_input("in/PMC7000009.xml", storage.access(), selection))
    second = next(read_article_input("in/PMC7000010.xml", storage.access(), selection))
    assert (first.source.license, first.source.pmid) == (CC_BY_NC, "31000001")
    assert second.source.license == CC_BY
    alone = next(read_article_input("in/PMC7000009.xml", storage.access()))
    assert alone.source.license == UNKNOWN
    commercial = ArticleSelection(file_list=file_list, policy=LicensePolicy.COMMERCIAL)
    summary, = read_article_input("in/PMC7000009.xml", storage.access(), commercial)
    assert summary.skipped.startswith("file list license cc-by-nc")


def test_helpers():
    assert media_candidates("f1") == ["f1.jpg", "f1.jpeg", "f1.png", "f1.tif", "f1.tiff"]
    assert media_candidates("f1.gif")[0] == "f1.jpg"
    assert media_candidates("f1.TIF")[:2] == ["f1.TIF", "f1.jpg"]
    assert media_candidates("pone.0046493.g001")[0] == "pone.0046493.g001.jpg"
    assert [pmcid_from_name(n) for n in ("PMC13900.tar.gz", "PMC10777901.1.xml", "x_PMC5.nxml", "APMC1", "a")] == [
        "PMC13900", "PMC10777901", "PMC5", "", ""]


# --- The real samples, by path: no media beside them, so every captioned figure is missing_image -----------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_samples_by_path(name):
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real PMC samples live in ../shared/samples beside the checkout")
    pmcid, _, license_class, figures, _ = EXPECTED[name]
    records, rejected, summaries = split(read_article_input(str(path)))
    assert records == []
    assert [row.id for row in rejected] == [f"{pmcid}_{figure_id}" for figure_id, _ in figures]
    assert {row.license for row in rejected} <= {license_class}
    assert {(row.reason, row.stage) for row in rejected if row.caption} <= {("missing_image", "image")}
    assert summaries == [ArticleSummary(os.path.basename(path), pmcid, len(figures))]


# --- The bundled demo sample's PMC-style articles ------------------------------------------------------------


def test_demo_articles_read_from_their_package_and_directory(tmp_path):
    from chimed_pipeline.sample import article_inputs, sample_articles

    for relative, data in sample_articles().items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    with tarfile.open(tmp_path / "PMC99000001.tar.gz") as package:
        names = package.getnames()
    assert {n.rsplit(".", 1)[1] for n in names} == {"nxml", "jpg", "gif"}
    outputs = [split(read_article_input(path)) for path in article_inputs(str(tmp_path))]
    records = [record for records, _, _ in outputs for record in records]
    assert [r.id for r in records] == [f"PMC99000001_F{n}" for n in (1, 2, 3)] + [
        f"PMC99000002_F{n}" for n in (1, 2, 3, 4)]
    assert all(r.source.image.endswith((".jpg", ".png")) and r.caption and r.inline_mentions_en for r in records)
    assert [r.source.license for r in records] == [CC_BY] * 6 + [CC_BY_NC]  # Figure 4 is a CC BY-NC reprint


def test_demo_tm_translates_every_caption_and_mention():
    from importlib import resources

    from chimed_pipeline.sample import ARTICLES, SAMPLE_DATA, TM_FILE
    from schemas import TmKind, TmRow, tm_lookup_key
    from transforms.jats import parse_article
    from transforms.text import clean_text

    data = resources.files("chimed_pipeline").joinpath(SAMPLE_DATA)
    tm = {TmRow.from_dict(json.loads(line)).lookup_key for line in data.joinpath(TM_FILE).read_text().splitlines()}
    for name in ARTICLES:
        for figure in parse_article(data.joinpath(name).read_bytes()).figures:
            assert tm_lookup_key(clean_text(figure.caption), "zh", TmKind.CAPTION.value) in tm, figure.caption
            for mention in figure.mentions:
                assert tm_lookup_key(clean_text(mention), "zh", TmKind.MENTION.value) in tm, mention


def test_demo_build_keeps_the_articles_and_rejects_the_noncommercial_figure(built_release):
    rows = {row["id"]: row for row in pq.read_table(built_release / "index").to_pylist()}
    assert {key: rows[key]["status"] for key in rows if key.startswith("PMC99")} == {
        **{f"PMC99000001_F{n}": Status.KEPT.value for n in (1, 2, 3)},
        **{f"PMC99000002_F{n}": Status.KEPT.value for n in (1, 2, 3)},
        "PMC99000002_F4": Status.REJECTED.value,
    }
    assert rows["PMC99000002_F4"]["reason"] == Reason.LICENSE_EXCLUDED.value
    assert rows["PMC99000001_F1"]["source_image"] == "PMC99000001/demo-lung-g001.jpg"


# --- The Beam ingest reads articles through FileSystems --------------------------------------------------------


def test_beam_ingest_dispatches_articles_and_counts_them(tmp_path):
    from transforms.ingest import load_selection, read_input_file

    (tmp_path / "PMC7000001.tar.gz").write_bytes(legacy_package())
    (tmp_path / "list.txt").write_text("PMC7000001\n")
    records, rejected, summaries = split(read_input_file(str(tmp_path / "PMC7000001.tar.gz"), ""))
    assert len(records) == 2 and len(rejected) == 3 and summaries[0].figures == 5
    selection = load_selection(str(tmp_path / "list.txt"), "", LicensePolicy.COMMERCIAL)
    assert selection.pmcids == {"PMC7000001"} and selection.policy is None  # no file list: no preselection
    write_article_dir(tmp_path / "PMC7000005", "PMC7000005.xml", oai_article("7000005", floats=OAI_FLOATS),
                      {"oai-g1.jpg": image_bytes((20, 20), "JPEG")})
    outputs = list(read_input_file(str(tmp_path / "PMC7000005"), "", selection))
    assert outputs == [ArticleSummary("PMC7000005", "PMC7000005", skipped="not listed in --pmcids")]
