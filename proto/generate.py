"""Regenerate the Python code for the wire contract: ``python -m ponder.proto.generate``.

protoc names imports after the .proto path (``ponder.v1``); the installed package is
``ponder.proto.ponder.v1``, so the generated imports are rewritten to that path.
``--check`` exits 1 when the checked-in code differs from a fresh generation (used in CI).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ["ponder/v1/reasoner.proto"]
GENERATED = ["reasoner_pb2.py", "reasoner_pb2.pyi", "reasoner_pb2_grpc.py"]
_IMPORT_FROM = "from ponder.v1 import"
_IMPORT_TO = "from ponder.proto.ponder.v1 import"


def generate() -> dict[str, str]:
    """Run protoc into a temporary folder and return {file name: text}."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *[str(PROTO_ROOT / p) for p in PROTO_FILES],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        gen_dir = Path(out) / "ponder" / "v1"
        return {
            name: (gen_dir / name).read_text().replace(_IMPORT_FROM, _IMPORT_TO)
            for name in GENERATED
        }


def drift() -> list[str]:
    """Names of generated files that differ from (or are missing beside) the .proto."""
    target = PROTO_ROOT / "ponder" / "v1"
    stale = []
    for name, text in generate().items():
        path = target / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        if stale:
            print("generated code is stale: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("generated code matches the .proto")
        return 0
    target = PROTO_ROOT / "ponder" / "v1"
    for name, text in generate().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
