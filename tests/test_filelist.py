"""PMC OA file lists (.csv / .txt), `--pmcids` files, and the selection made before any XML is read."""
import pytest

from transforms.filelist import ArticleSelection, FileListEntry, parse_file_list, parse_pmcids
from transforms.licenses import CC0, CC_BY, CC_BY_NC_ND, UNKNOWN, LicensePolicy

CSV = """File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License,Retracted
oa_package/08/e0/PMC13900.tar.gz,"Breast Cancer Res. 2001 Nov 2; 3(1):55-60",PMC13900,2019-11-05 11:56:12,11250746,NO-CC CODE,no
oa_package/b0/ac/PMC13901.tar.gz,"Radiology, Imaging and Oncology. 2001; 3(1):61-68",PMC13901,2019-11-05 11:56:12,,CC BY,no
oa_package/00/00/PMC555.tar.gz,"A, B, and C. 2020",PMC555,2020-01-01 00:00:00,123,CC BY-NC-ND,no
"""

TXT = """2024-05-17 10:20:30
oa_package/08/e0/PMC13900.tar.gz\tBreast Cancer Res. 2001 Nov 2; 3(1):55-60\tPMC13900\tPMID:11250746\tNO-CC CODE
oa_package/b0/ac/PMC13901.tar.gz\tRadiology, Imaging and Oncology. 2001; 3(1):61-68\tPMC13901\tPMID:\tCC0
"""


def test_csv_with_quoted_commas():
    entries = parse_file_list(CSV.splitlines(keepends=True))
    assert entries == {
        "PMC13900": FileListEntry(UNKNOWN, "Breast Cancer Res. 2001 Nov 2; 3(1):55-60", "11250746",
                                  "oa_package/08/e0/PMC13900.tar.gz"),
        "PMC13901": FileListEntry(CC_BY, "Radiology, Imaging and Oncology. 2001; 3(1):61-68", "",
                                  "oa_package/b0/ac/PMC13901.tar.gz"),
        "PMC555": FileListEntry(CC_BY_NC_ND, "A, B, and C. 2020", "123", "oa_package/00/00/PMC555.tar.gz"),
    }


def test_txt_with_timestamp_line_and_pmid_prefix():
    entries = parse_file_list(TXT.splitlines(keepends=True))
    assert entries["PMC13900"] == FileListEntry(UNKNOWN, "Breast Cancer Res. 2001 Nov 2; 3(1):55-60", "11250746",
                                                "oa_package/08/e0/PMC13900.tar.gz")
    assert entries["PMC13901"].license == CC0 and entries["PMC13901"].pmid == ""
    assert entries["PMC13901"].citation == "Radiology, Imaging and Oncology. 2001; 3(1):61-68"


def test_keep_bounds_what_is_stored():
    assert set(parse_file_list(CSV.splitlines(), keep={"PMC555"})) == {"PMC555"}


def test_csv_without_accession_column_is_an_error():
    with pytest.raises(ValueError, match="Accession"):
        parse_file_list(["File,Citation\n", "a,b\n"])


def test_pmcids_file():
    lines = ["pmcid\n", "PMC13900\n", "13901  # a comment\n", "\n", "# only a comment\n", "PMC555,extra\n"]
    assert parse_pmcids(lines) == {"PMC13900", "PMC13901", "PMC555"}
    with pytest.raises(ValueError, match="line 2"):
        parse_pmcids(["PMC1\n", "oops\n"])


def test_selection_before_reading():
    file_list = parse_file_list(CSV.splitlines())
    everything = ArticleSelection()
    assert everything.skip_reason("PMC13900") == ""
    listed = ArticleSelection(pmcids=frozenset({"PMC13901"}))
    assert listed.skip_reason("PMC13900") == "not listed in --pmcids"
    assert listed.skip_reason("PMC13901") == ""
    assert listed.skip_reason("") == ""  # unknown until the XML is read
    commercial = ArticleSelection(file_list=file_list, policy=LicensePolicy.COMMERCIAL)
    assert commercial.skip_reason("PMC13901") == ""
    assert commercial.skip_reason("PMC555") == "file list license cc-by-nc-nd not admitted by --license commercial"
    assert commercial.skip_reason("PMC13900").startswith("file list license unknown")
    assert commercial.skip_reason("PMC999") == ""  # not in the list: read, the XML decides
    assert ArticleSelection(file_list=file_list).skip_reason("PMC555") == ""  # no policy: fallback only
