"""A test-only reader of TensorBoard event files (tensorboardX writes them, but has no reader;
tensorboard is not installed): TFRecord framing with masked CRC32C checks, Event protos."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c


def read_events(path: str | os.PathLike) -> list[dict]:
    """-> one dict per event: {step, wall_time, file_version?, tag: value for each scalar}."""
    data = Path(path).read_bytes()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        if header_crc != masked_crc32c(header) or payload_crc != masked_crc32c(payload):
            raise ValueError(f"{path}: CRC mismatch at byte {offset}")
        event = Event.FromString(payload)
        row = {"step": event.step, "wall_time": event.wall_time}
        if event.file_version:
            row["file_version"] = event.file_version
        if event.HasField("session_log"):
            row["session_log"] = event.session_log.status
        row.update({v.tag: v.simple_value for v in event.summary.value})
        events.append(row)
        offset += 16 + length
    return events
