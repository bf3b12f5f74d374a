from __future__ import annotations

import json

import pytest

from schemas import IndexRow, Reason, Record
from transforms.manifests import MalformedRow, normalize_pmcid, read_manifest, resolve_image


def records_of(lines: list, path="/data/set.jsonl", root="") -> list:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    return read_manifest(text, path, root)


def test_pmc_oa_rows_get_line_ids_and_resolved_images():
    out = records_of([{"image": "a.jpg", "caption": "A CT.", "pmcid": "123", "license": "CC BY 4.0"}, "",
                      {"id": "own", "image": "b.jpg", "caption": "B"}])
    assert [r.id for r in out] == ["set_L1", "own"]
    first = out[0]
    assert first.image_uri == "/data/a.jpg" and first.source.image == "a.jpg"
    assert first.source.pmcid == "PMC123" and first.source.license == "cc-by"
    assert out[1].source.license == "unknown"  # no license field: fails the commercial default


def test_bad_rows_become_rejected_rows_with_their_line_id():
    out = records_of([{"image": "a.jpg", "caption": "ok"}, "{not json", {"caption": "no image"}, "[1, 2]",
                      {"image": "../../etc/passwd", "caption": "x"}])
    rows = [r for r in out if isinstance(r, IndexRow)]
    assert [(r.id, r.reason) for r in rows] == [(f"set_L{n}", Reason.MALFORMED_RECORD.value) for n in (2, 3, 4, 5)]
    assert all(r.detail and r.stage == "ingest" for r in rows)


def test_json_array_manifest_and_conversation_rows_merge_by_image():
    rows = [
        {"id": "q1", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"}]},
        {"id": "q2", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nQ2"}, {"from": "gpt", "value": "A2"}]},
        {"id": "q3", "image": "y.jpg", "conversations": [{"from": "human", "value": "Q3"}, {"from": "gpt", "value": "A3"}],
         "fig_caption": "Cap", "in_text_mention": [{"tokens": "See Fig. 1 ."}]},
    ]
    out = read_manifest(json.dumps(rows), "/d/llava.json", "/images")
    assert [r.id for r in out] == ["q1", "q3"]
    assert [t["value"] for t in out[0].conversations] == ["<image>\nQ1", "A1", "<image>\nQ2", "A2"]
    assert out[1].caption == "Cap" and out[1].inline_mentions_en == ["See Fig. 1 ."]
    assert out[1].image_uri == "/images/y.jpg"


def test_invalid_conversation_turn_is_malformed():
    out = records_of([{"image": "a.jpg", "conversations": [{"from": "bot", "value": "?"}]}])
    assert isinstance(out[0], IndexRow) and "from=human|gpt" in out[0].detail


@pytest.mark.parametrize("value,expected", [("PMC42", "PMC42"), ("42", "PMC42"), ("pmc7", "PMC7"), ("x", ""), (None, "")])
def test_normalize_pmcid(value, expected):
    assert normalize_pmcid(value) == expected


def test_resolve_image_keeps_uris_and_refuses_escapes():
    assert resolve_image("gs://b/x.jpg", "/root") == "gs://b/x.jpg"
    assert resolve_image("sub/x.jpg", "gs://b/imgs") == "gs://b/imgs/sub/x.jpg"
    with pytest.raises(MalformedRow):
        resolve_image("a/../../x.jpg", "/root")


def test_record_key_is_dot_free_unique_and_short():
    from schemas import record_key

    assert record_key("PMC1_F1") == "PMC1_F1"
    dotted, slashed = record_key("PMC1_fig.1"), record_key("PMC1_fig/1")
    assert "." not in dotted and dotted != slashed and dotted.startswith("PMC1_fig_1_")
    assert len(record_key("x" * 300)) <= 89
    assert Record(id="a.b").key == record_key("a.b")
