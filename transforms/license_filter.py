"""License stage: keep only what the `--license` policy admits (runs before dedup, see DESIGN)."""
from __future__ import annotations

from schemas import IndexRow, Reason, Record, Stage
from transforms.base import RecordFn
from transforms.licenses import LicensePolicy, is_admissible


class FilterLicenseFn(RecordFn):
    stage_name = "license"

    def __init__(self, policy: LicensePolicy) -> None:
        super().__init__()
        self.policy = policy

    def handle(self, record: Record):
        if is_admissible(record.source.license, self.policy):
            yield record
        else:
            detail = f"license {record.source.license or 'unknown'} not admitted by --license {self.policy.value}"
            yield IndexRow.rejected(record, Stage.LICENSE, Reason.LICENSE_EXCLUDED, detail)
