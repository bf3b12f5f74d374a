# Dataflow worker image: Beam's Python SDK container plus this package, same versions as the launcher.
# The base tag must equal BEAM_VERSION in setup.py (tests/test_dataflow.py checks it): launcher and
# workers must run the same Beam. Build, push and run: docs/dataflow.md.
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/chimed-pipeline
COPY requirements.lock setup.py README.md ./
COPY schemas schemas
COPY transforms transforms
COPY chimed_pipeline chimed_pipeline

# Into the image's global environment (Dataflow starts workers with the image's python, and a
# virtualenv made here would be bypassed); not editable, so the copy above can change freely.
# The lock pins every dependency to the launcher's version: same inputs, same bytes on workers.
RUN pip install --no-cache-dir --disable-pip-version-check -c requirements.lock '.[gcp]' \
    && python -c "import chimed_pipeline.pipeline, apache_beam; assert apache_beam.__version__ == '2.77.0'"

# Keep the base image's ENTRYPOINT (/opt/apache/beam/boot): it starts the SDK harness on workers.
