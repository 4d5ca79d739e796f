"""Generate the Python modules of rankboard's .proto files (run by the Makefile).

The .proto files import each other as ``rankboard/protos/<name>.proto`` so that
the generated code imports ``rankboard.protos.<name>_pb2``. protoc maps import
paths to files through its include path, so the sources are staged under
``<tmp>/rankboard/protos/`` and the outputs are copied back next to the sources.

Example::

    python protos/generate.py   # writes protos/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent


def generate(out_dir: Path = HERE) -> list[Path]:
    """Compile every ``*.proto`` of this folder; return the files written."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src" / "rankboard" / "protos"
        gen = Path(tmp) / "gen"
        src.mkdir(parents=True)
        gen.mkdir()
        protos = sorted(HERE.glob("*.proto"))
        for proto in protos:
            shutil.copy(proto, src / proto.name)
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "protoc",
            f"-I{Path(tmp) / 'src'}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
            *[f"rankboard/protos/{p.name}" for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed: see the messages above")
        written = []
        with_service = {p.stem for p in protos if "\nservice " in p.read_text()}
        for path in sorted((gen / "rankboard" / "protos").iterdir()):
            if path.name.endswith("_pb2_grpc.py") and path.name[:-12] not in with_service:
                continue
            target = out_dir / path.name
            shutil.copy(path, target)
            written.append(target)
    return written


if __name__ == "__main__":
    files = generate()
    print(f"generated {len(files)} files in {HERE}", file=sys.stderr)
