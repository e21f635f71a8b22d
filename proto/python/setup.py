"""Generates the alps.v1 stubs at build time: protoc (from grpcio-tools) runs on
../alps/v1/*.proto and writes the `alps.v1` package next to `alps_client` in the build tree,
so a wheel carries stubs that match the server's .proto files it was built from."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_ROOT = Path(__file__).resolve().parent.parent


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        from importlib import resources

        from grpc_tools import protoc

        out = Path(self.build_lib)
        protos = sorted((PROTO_ROOT / "alps" / "v1").glob("*.proto"))
        if not protos:
            raise RuntimeError(f"no .proto files under {PROTO_ROOT / 'alps' / 'v1'}: build from the ALPS repository")
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{resources.files('grpc_tools') / '_proto'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--pyi_out={out}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + " ".join(args))
        for package in (out / "alps", out / "alps" / "v1"):
            (package / "__init__.py").touch()


setup(cmdclass={"build_py": BuildWithStubs})
