"""Reading a W&B offline run's files back, for tests that check what was logged."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path


# --- a reader for wandb's offline transaction log (leveldb-log framing of wandb_internal_pb2.Record) -----
# wandb 0.31 has no Python reader (its reader lives in the Go core), so the test parses the framing itself:
# a 7-byte file header (":W&B", magic 0xBEE1, version), 32 KiB blocks, and per chunk crc32c(4) length(2)
# type(1) with FULL=1 FIRST=2 MIDDLE=3 LAST=4. Payloads are protobuf Records from wandb.proto.
def read_wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a wandb transaction log"
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        chunks = payload if kind in (1, 2) else chunks + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def wait_for_records(run_folder: Path, timeout_s: float = 30.0) -> list:
    """The run's records once its log ends with the exit record (wandb-core flushes it after finish())."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = list(run_folder.glob("run-*.wandb"))
        records = read_wandb_records(files[0]) if files and files[0].stat().st_size > 7 else []
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_folder} has no complete transaction log after {timeout_s} s")
        time.sleep(0.05)


def history_rows(records) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    return rows


def offline_runs(wandb_dir: Path, run_id: str) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}"))
