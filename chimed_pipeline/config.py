"""The run's own options (everything Beam does not know about), picklable for the workers."""
from __future__ import annotations

import dataclasses

from chimed_pipeline.llm import LlmConfig
from transforms.images import ImageLimits
from transforms.licenses import LicensePolicy
from transforms.neardup import DEFAULT_HAMMING, exclusion_digest

DEFAULT_SHARD_SAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class RunConfig:
    inputs: tuple = ()
    output: str = "out"
    images: str = ""
    file_list: str = ""  # --file-list: PMC oa_file_list path
    pmcids: str = ""  # --pmcids: file of PMCIDs to read
    license: LicensePolicy = LicensePolicy.COMMERCIAL
    tm: tuple = ()
    llm: LlmConfig = LlmConfig()  # --llm-*: endpoint, limits, batches (never the key)
    shard_samples: int = DEFAULT_SHARD_SAMPLES
    image: ImageLimits = ImageLimits()
    qa: str = "template"  # stage-2 QA: llm | template | none (transforms.instruct.QA_MODES)
    dedup_hamming: int = DEFAULT_HAMMING  # --dedup-hamming: near duplicates within this many pHash bits
    excluded_hashes: tuple = ()  # --exclude-hashes: ExcludedHash entries, read at launch

    def manifest_options(self) -> dict:
        """Only what changes the output's bytes: no paths, runner, workers, endpoints or times."""
        return {
            "license": self.license.value,
            "shard_samples": self.shard_samples,
            "image_format": self.image.image_format,
            "image_max_side": self.image.max_side,
            "image_min_side": self.image.min_side,
            "image_max_aspect_ratio": self.image.max_aspect_ratio,
            "image_max_pixels": self.image.max_pixels,
            "llm_model": self.llm.model,
            "qa": self.qa,
            "dedup_hamming": self.dedup_hamming,
            "excluded_hashes": exclusion_digest(self.excluded_hashes),
        }
