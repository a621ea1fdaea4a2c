"""The fixtures every test can use, one module per kind (tests/fixtures/): the tiny models, LoRA folders, ONNX exports,
and the running services (the shared one, the per-module factory, PostgreSQL, S3)."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.loras",
    "tests.fixtures.exports",
    "tests.fixtures.services",
]
