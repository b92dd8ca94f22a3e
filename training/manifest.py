"""The artifacts manifest: for every trained component, its files with sha256 and size, and the
exact command that reproduces it. Each training job updates its own entry in
``<out's folder>/manifest.json`` when it saves; ``verify`` re-hashes the files."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def update(root: Path, component: str, files: list[Path], command: str, extra: dict[str, Any] | None = None) -> Path:
    """Record ``files`` (paths under ``root``) and ``command`` as ``component``'s entry."""
    path = root / MANIFEST
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("components", {})
    data["components"][component] = {
        "command": command,
        "files": {
            str(f.relative_to(root)): {"sha256": sha256(f), "bytes": f.stat().st_size} for f in sorted(files)
        },
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        **(extra or {}),
    }
    # Each file once, though several components may list it (the MC labels feed two PRMs).
    unique = {rel: meta["bytes"] for comp in data["components"].values() for rel, meta in comp["files"].items()}
    data["total_bytes"] = sum(unique.values())
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def verify(root: Path) -> list[str]:
    """Files whose sha256 differs from the manifest (or that are missing); empty when all match."""
    data = json.loads((root / MANIFEST).read_text())
    bad = []
    for comp in data["components"].values():
        for rel, meta in comp["files"].items():
            f = root / rel
            if not f.exists() or sha256(f) != meta["sha256"]:
                bad.append(rel)
    return bad
