"""The one payload every case sends: a ~300-byte JSON object, like a fabrication event."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PAYLOAD", "PAYLOAD_BYTES", "body"]

#: What a print-job event carries; sized so its JSON is about 300 bytes.
PAYLOAD: dict[str, Any] = {
    "job_id": "9f1c2e7a-3b4d-4c5e-8f90-a1b2c3d4e5f6",
    "printer": "prusa-mk4-07",
    "material": "PETG",
    "layer_height_mm": 0.2,
    "layers": 412,
    "nozzle_c": 240,
    "bed_c": 80,
    "estimated_s": 5400,
    "file": "brackets/arm-left-v3.gcode",
    "notes": "second attempt after warping on layer 37; fan at 40 percent",
}

#: The payload's JSON size in bytes.
PAYLOAD_BYTES = len(json.dumps(PAYLOAD).encode())


def body(index: int = 0) -> bytes:
    """The payload as JSON bytes, stamped with ``index`` (baselines send bytes, not dicts)."""
    return json.dumps({**PAYLOAD, "seq": index}).encode()
