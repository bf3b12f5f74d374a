"""Pair manifests -> Records (pure; no Beam, no I/O).

Row shapes (DESIGN "Inputs" 3), told apart by their fields:
- PMC-OA style:   {"image", "caption"[, "pmcid", "pmid", "license", "license_url", "id"]}
- LLaVA style:    {"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}
  (LLaVA-Med / ChiMed-VL files; an optional "caption" / "fig_caption" becomes the caption)
- PMC-CaseReport: {"PMC_id", "context", "question", "answer", "inline", "img_ref"}: read as a
  LLaVA-style row whose conversation is the question and answer, about the first image `img_ref`
  names (a name, a list, or a list written as text); `inline` becomes an inline mention, and the
  case `context` is not carried (it describes the patient, not the figure)

Ids: the row's own `id`, else `<manifest stem>_L<line>` (1-based line, or position in a JSON array).
Rows of a conversation manifest that name the same image become one record, conversations in file
order, under the first row's id. A row that cannot be read becomes a `malformed_record` IndexRow.
"""
from __future__ import annotations

import ast
import json
import posixpath
import re
from typing import Iterable, Iterator

from schemas import IndexRow, Reason, Record, Source, Stage
from schemas.records import GPT, HUMAN, TURN_FROM, TURN_VALUE, turn
from transforms.licenses import UNKNOWN, normalize_license_class

MANIFEST_SUFFIXES = (".jsonl", ".json")
_PMCID = re.compile(r"^(?:PMC)?(\d+)$", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


class MalformedRow(ValueError):
    """A manifest row that cannot become a record; the message is the index `detail`."""


def is_manifest(path: str) -> bool:
    return path.lower().endswith(MANIFEST_SUFFIXES)


def manifest_stem(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    for suffix in MANIFEST_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def normalize_pmcid(value) -> str:
    match = _PMCID.match(str(value or "").strip())
    return f"PMC{match.group(1)}" if match else ""


def resolve_image(image: str, images_root: str) -> str:
    """Where to read the image from: as given when absolute or a URI, else under `images_root`."""
    if _SCHEME.match(image) or image.startswith("/"):
        return image
    if ".." in image.replace("\\", "/").split("/"):
        raise MalformedRow(f"image path leaves the image root: {image!r}")
    return posixpath.join(images_root, image) if images_root else image


def iter_rows(text: str) -> Iterator[tuple[int, object]]:
    """(1-based line or array position, parsed row or the JSON error) for a JSON or JSONL manifest."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            yield 1, MalformedRow(f"invalid JSON array: {error.msg} at line {error.lineno}")
            return
        yield from enumerate(rows, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, MalformedRow(f"invalid JSON: {error.msg} at column {error.colno}")


def _string(row: dict, *names: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, (str, int)) and str(value).strip():
            return str(value).strip()
    return ""


def _conversations(row: dict) -> list:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MalformedRow("conversations must be a non-empty list")
    result = []
    for item in turns:
        if not isinstance(item, dict) or item.get(TURN_FROM) not in (HUMAN, GPT):
            raise MalformedRow("each conversation turn needs from=human|gpt and a value")
        result.append(turn(item[TURN_FROM], str(item.get(TURN_VALUE, ""))))
    return result


def _mentions(row: dict) -> list:
    """LLaVA-Med's `in_text_mention` holds dicts with `tokens`; plain lists of strings also work."""
    mentions = row.get("in_text_mention") or row.get("inline_mentions") or []
    if not isinstance(mentions, list):
        return []
    texts = [m.get("tokens", "") if isinstance(m, dict) else str(m) for m in mentions]
    return [t.strip() for t in texts if t and t.strip()]


def _image_refs(value: object) -> list[str]:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = ast.literal_eval(value.strip())  # "['a.jpg', 'b.jpg']", as the dataset's CSV wrote it
        except (ValueError, SyntaxError):
            return []
    if isinstance(value, str):
        value = [value]
    return [str(v).strip() for v in value if str(v).strip()] if isinstance(value, list) else []


def is_case_report_row(row: object) -> bool:
    return isinstance(row, dict) and "img_ref" in row and "question" in row


def case_report_as_llava(row: dict) -> dict:
    images = _image_refs(row.get("img_ref"))
    carried = ("id", "license", "license_url", "pmid", "title", "journal", "year")
    return {
        **{name: row[name] for name in carried if name in row},
        "image": images[0] if images else "",
        "pmcid": row.get("PMC_id") or row.get("pmcid"),
        "conversations": [turn(HUMAN, str(row.get("question") or "")), turn(GPT, str(row.get("answer") or ""))],
        "inline_mentions": [row["inline"]] if isinstance(row.get("inline"), str) else [],
    }


def row_to_record(row: object, default_id: str, source_file: str, images_root: str) -> Record:
    if not isinstance(row, dict):
        raise MalformedRow(f"row is a {type(row).__name__}, not an object")
    if is_case_report_row(row):
        row = case_report_as_llava(row)
    image = _string(row, "image")
    if not image:
        raise MalformedRow("row has no image")
    conversations = _conversations(row) if "conversations" in row else []
    if not conversations and "caption" not in row:
        raise MalformedRow("row has neither caption nor conversations")
    license_text = _string(row, "license")
    return Record(
        id=_string(row, "id") or default_id,
        label=_string(row, "label", "fig_label"),
        conversations=conversations,
        inline_mentions_en=_mentions(row),
        source=Source(
            pmcid=normalize_pmcid(row.get("pmcid") or row.get("PMC_id")),
            pmid=_string(row, "pmid"),
            figure_id=_string(row, "figure_id"),
            image=image,
            license=normalize_license_class(license_text) if license_text else UNKNOWN,
            license_url=_string(row, "license_url"),
            title=_string(row, "title"),
            journal=_string(row, "journal"),
            year=_string(row, "year"),
        ),
        source_file=source_file,
        caption=_string(row, "caption", "fig_caption"),
        image_uri=resolve_image(image, images_root),
    )


def _merge_conversations(first: Record, later: Record) -> None:
    """Append `later`'s turns to `first` (the text stage puts `<image>` back in LLaVA's one place)."""
    first.conversations.extend(later.conversations)


def read_manifest(text: str, path: str, images_root: str) -> Iterable[Record | IndexRow]:
    """Every row of one manifest file as a Record, or an IndexRow for a row that cannot be read."""
    stem, source_file = manifest_stem(path), posixpath.basename(path)
    root = images_root or posixpath.dirname(path)
    by_image: dict[str, Record] = {}  # conversation rows naming the same image merge
    out: list[Record | IndexRow] = []
    for number, row in iter_rows(text):
        default_id = f"{stem}_L{number}"
        try:
            if isinstance(row, MalformedRow):
                raise row
            record = row_to_record(row, default_id, source_file, root)
        except MalformedRow as error:
            stub = Record(id=default_id, source_file=source_file)
            out.append(IndexRow.rejected(stub, Stage.INGEST, Reason.MALFORMED_RECORD, str(error)))
            continue
        if record.conversations:
            earlier = by_image.get(record.image_uri)
            if earlier is not None:
                _merge_conversations(earlier, record)
                continue
            by_image[record.image_uri] = record
        out.append(record)
    return out
