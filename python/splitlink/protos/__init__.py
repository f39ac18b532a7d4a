"""The wire schema (``splitlink/v1/frame.proto``) shipped with the package.

splitlink itself encodes and decodes frames in C++ without a protobuf runtime. The schema is
here so that other tools (and splitlink's own interoperability tests and benchmarks) can parse
frames with any protobuf library. ``compile_python`` generates Python classes with grpcio-tools.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
FRAME_PROTO = ROOT / "splitlink" / "v1" / "frame.proto"


def compile_python(out_dir: str | Path) -> ModuleType:
    """Compiles frame.proto into ``out_dir`` and returns the imported ``frame_pb2`` module."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise ImportError("compiling the splitlink protos needs grpcio-tools: pip install grpcio-tools") from None
    if not FRAME_PROTO.is_file():
        raise FileNotFoundError(f"{FRAME_PROTO} is missing; reinstall splitlink")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", str(FRAME_PROTO)])
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc} compiling {FRAME_PROTO}")
    return _import_generated(out)


def _import_generated(out: Path) -> ModuleType:
    # The generated module lives at out/splitlink/v1/frame_pb2.py; load it under a private name so
    # it cannot shadow the installed splitlink package.
    path = out / "splitlink" / "v1" / "frame_pb2.py"
    spec = importlib.util.spec_from_file_location("_splitlink_frame_pb2", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
