"""Shared pytest configuration.

`make test` builds the C++ suites, the sanitizer build and the fuzzer first and passes
--native-build=DIR; then the tests that run them are mandatory. Run alone, pytest skips them
with the reason.

Optional dependencies (DeepSpeed) skip their tests when not installed, unless the environment
variable SPLITLINK_TEST_REQUIRE (comma separated, e.g. ``deepspeed``) names them: then a missing or
broken install fails those tests (``tests/support/required.py``; ``make test`` sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from required import ENV, required

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--native-build",
        default=os.environ.get("SPLITLINK_NATIVE_BUILD", ""),
        help="directory with the C++ test, sanitizer and fuzzer builds (made by `make native`); "
        "when given, their tests must run and may not skip",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        required()
    except ValueError as e:  # a typo must not quietly turn a requirement off
        raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped, with the reason, where torch sees no GPU (they run on a
    GPU machine through ``make gpu-check``)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); run `make gpu-check` on a GPU machine")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    names = required()
    return f"{ENV}: {', '.join(sorted(names)) if names else 'nothing (optional dependencies may skip)'}"


@pytest.fixture(scope="session")
def native_build(request: pytest.FixtureRequest) -> Path:
    value = request.config.getoption("--native-build")
    if not value:
        pytest.skip("C++ suites not built: run `make test` (or pass --native-build=build)")
    path = Path(value)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_dir():
        pytest.fail(f"--native-build={value}: {path} does not exist; run `make native` first")
    return path


@pytest.fixture(scope="session")
def frame_pb2(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """frame.proto compiled by protoc (grpcio-tools), as an independent decoder."""
    from splitlink.protos import compile_python

    return compile_python(tmp_path_factory.mktemp("protos"))
