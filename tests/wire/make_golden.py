"""Writes tests/golden/v<version>/*.bin from tests/wire/cases.py.

Run only when adding a golden frame or a new wire version; existing files must keep decoding
forever, so never regenerate the files of a released version.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

import numpy as np  # noqa: E402
from wire_cases import GOLDEN, GOLDEN_COMPRESSED  # noqa: E402

from splitlink import wire  # noqa: E402


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "golden" / f"v{wire.WIRE_VERSION}"
    out.mkdir(parents=True, exist_ok=True)
    for name, (make, header) in GOLDEN.items():
        path = out / f"{name}.bin"
        if path.exists() and "--force" not in sys.argv:
            print(f"keep {path}")
            continue
        path.write_bytes(bytes(wire.pack(make(), **header, pool=None)))
        print(f"wrote {path}")
    for name, (make, configs, header) in GOLDEN_COMPRESSED.items():
        path = out / f"{name}.bin"
        if path.exists() and "--force" not in sys.argv:
            print(f"keep {path}")
            continue
        frame = bytes(wire.pack(make(), compress=configs(), **header, pool=None))
        path.write_bytes(frame)
        # What this version decodes, kept so that later versions are held to it.
        decoded = {"/".join(p): t.numpy() for p, t in wire.unpack(frame).flat.items()}
        np.savez(out / f"{name}.expected.npz", **decoded)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
