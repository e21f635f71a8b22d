"""Python gRPC stubs for ``proto/alps/v1``, generated at run time with ``grpc_tools.protoc``.

Nothing generated is checked in: the stubs are written to ``experiments/.generated/<hash>/``
(git-ignored), where ``<hash>`` covers the ``.proto`` files and the grpcio-tools version, so an
edited protocol regenerates them and an unchanged one reuses them.

    from experiments.protos import pb
    pb.projects_pb2.Project(...), pb.inference_pb2_grpc.InferenceServiceStub(channel)
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import sys
import tempfile
import types
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
CACHE_DIR = Path(__file__).resolve().parent / ".generated"
MODULES = ("common", "projects", "inference", "heuristics", "examples", "training", "models")


def _proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "alps" / "v1").glob("*.proto"))


def _fingerprint() -> str:
    import grpc_tools

    digest = hashlib.sha256(getattr(grpc_tools, "__version__", "unknown").encode())
    for path in _proto_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def generate(out_dir: Path) -> None:
    """Runs protoc (from grpcio-tools) on every ``proto/alps/v1/*.proto`` into ``out_dir``."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_DIR)) for p in _proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR}: {' '.join(args)}")


def stub_dir() -> Path:
    """The directory holding up-to-date stubs, generating them on first use."""
    target = CACHE_DIR / _fingerprint()
    if not (target / "alps" / "v1" / "training_pb2_grpc.py").exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=CACHE_DIR))
        try:
            generate(staging)
            try:
                staging.rename(target)
            except OSError:  # another process generated the same stubs meanwhile
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load() -> types.SimpleNamespace:
    """Imports the generated ``alps.v1`` modules; attributes ``<name>_pb2`` and ``<name>_pb2_grpc``."""
    path = str(stub_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    modules = {}
    for name in MODULES:
        modules[f"{name}_pb2"] = importlib.import_module(f"alps.v1.{name}_pb2")
        modules[f"{name}_pb2_grpc"] = importlib.import_module(f"alps.v1.{name}_pb2_grpc")
    return types.SimpleNamespace(**modules)


pb = load()
