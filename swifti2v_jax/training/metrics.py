"""Training metrics to stdout, JSON lines and TensorBoard event files.

No TensorFlow or tensorboard package is installed, so `EventFileWriter` writes the event file
format itself: TFRecord framing (length, masked CRC32C of the length, payload, masked CRC32C
of the payload) around hand-encoded `Event` protos holding `Summary.Value.simple_value`
scalars. TensorBoard reads these files like any other (`tensorboard --logdir WORKDIR/tb`).
Only the primary host writes.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

import jax


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


# Protobuf wire format: just the few fields of tensorboard's event.proto / summary.proto used.
def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, scalars=None, file_version=None) -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), file_version=3 | summary=5}."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b""
        for tag, value in scalars.items():
            # Summary.Value{tag=1 (string), simple_value=2 (float)}
            entry = _length_delimited(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)
            values += _length_delimited(1, entry)  # Summary{value=1 (repeated)}
        out += _length_delimited(5, values)
    return out


class EventFileWriter:
    def __init__(self, log_dir: str | os.PathLike):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = log_dir / name
        self._file = open(self.path, "ab")
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(tfrecord_frame(event))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write(encode_event(time.time(), step, scalars=values))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricsWriter:
    """Writes one dict of scalars per logged step to stdout, metrics.jsonl and tb/."""

    def __init__(self, workdir: str | os.PathLike):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        self._events = EventFileWriter(workdir / "tb")

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {name: float(value) for name, value in values.items()}
        print(f"step {step}: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())))
        sys.stdout.flush()
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        self._events.scalars(step, values)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()


def read_events(path: str | os.PathLike) -> list[dict]:
    """Parses an event file written by EventFileWriter (CRCs checked) -> [{step, tag: value}]."""
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
        events.append(_decode_event(payload))
        offset += 16 + length
    return events


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def _fields(data: bytes):
    offset = 0
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, offset = _read_varint(data, offset)
        elif wire_type == 1:
            value, offset = data[offset : offset + 8], offset + 8
        elif wire_type == 5:
            value, offset = data[offset : offset + 4], offset + 4
        elif wire_type == 2:
            length, offset = _read_varint(data, offset)
            value, offset = data[offset : offset + length], offset + length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        yield field, value


def _decode_event(payload: bytes) -> dict:
    event = {}
    for field, value in _fields(payload):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for _, entry in _fields(value):
                parts = dict(_fields(entry))
                event[parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    return event
