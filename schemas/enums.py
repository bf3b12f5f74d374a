"""Statuses, stages and the fixed vocabulary of rejection reasons."""
from __future__ import annotations

import enum


class Status(str, enum.Enum):
    KEPT = "kept"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Stage(str, enum.Enum):
    """Stages that can decide a record's fate, in the order they run."""

    INGEST = "ingest"
    IMAGE = "image"
    LICENSE = "license"
    DEDUP = "dedup"
    TEXT = "text"
    TRANSLATE = "translate"
    INSTRUCT = "instruct"
    WRITE = "write"


class Reason(str, enum.Enum):
    """Why a record is not kept. Extend here, never ad hoc."""

    MALFORMED_RECORD = "malformed_record"
    MALFORMED_XML = "malformed_xml"
    UNREADABLE_PACKAGE = "unreadable_package"
    MISSING_IMAGE = "missing_image"
    EMPTY_IMAGE = "empty_image"
    UNDECODABLE_IMAGE = "undecodable_image"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    EMPTY_CAPTION = "empty_caption"
    CAPTION_TOO_LONG = "caption_too_long"
    LANGUAGE_UNSUPPORTED = "language_unsupported"
    LICENSE_EXCLUDED = "license_excluded"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    EXCLUDED_HASH = "excluded_hash"
    UNTRANSLATED = "untranslated"
    TRANSLATION_FAILED = "translation_failed"
    TRANSLATION_CHECK_FAILED = "translation_check_failed"
    QA_FAILED = "qa_failed"
