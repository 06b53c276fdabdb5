"""Resumable ArrayRecord shards written by any number of processes (data/prepare.py).

The work is cut before it starts: shard k holds the records of videos [k*R, (k+1)*R) of the
sorted video list (R = records_per_shard), and process p of P writes the shards k = p mod P.
Each record's randomness is seeded by its video's index in the whole list, so the shards, and
every byte in them, are the same for any process count.

A shard is finished when its note OUT/.shards/train-KKKKK.json exists. Its records go to a
temporary file that is renamed to `train-KKKKK-of-NNNNN.array_record` (no file when every video
of the shard was skipped), then the note (what was written and skipped) is written, also by
rename. A rerun, with any process count, skips finished shards; a crash leaves at most a
temporary file, which is never taken for a shard. OUT/prepare_job.json pins what is being
prepared, so a rerun with other settings is refused instead of mixed in. Once every shard is
finished, process 0 writes the manifest: dataset.json (with all shards) and prepare_report.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from swifti2v_jax import leftovers
from swifti2v_jax.data import records

JOB_FILE = "prepare_job.json"
NOTES_DIR = ".shards"


def count(num_videos: int, records_per_shard: int) -> int:
    return -(-num_videos // records_per_shard)


def videos_of(shard: int, num_videos: int, records_per_shard: int) -> range:
    return range(shard * records_per_shard, min((shard + 1) * records_per_shard, num_videos))


def shards_of(process_index: int, process_count: int, total: int) -> range:
    """The shards one process writes (round robin: balanced, and fixed by the shard's index)."""
    return range(process_index, total, process_count)


def shard_name(shard: int, total: int) -> str:
    return f"train-{shard:05d}-of-{total:05d}.array_record"


def _note(out_dir: Path, shard: int) -> Path:
    return out_dir / NOTES_DIR / f"train-{shard:05d}.json"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def start_job(out_dir, job: dict, overwrite: bool) -> bool:
    """Creates OUT and its job file, or accepts an OUT holding the same job (-> True: a resume).
    Every process calls it; they write identical files, by rename."""
    out_dir = Path(out_dir)
    file = out_dir / JOB_FILE
    if file.is_file():
        if json.loads(file.read_text()) != job:
            raise ValueError(
                f"{out_dir} holds an unfinished or finished preparation with other settings "
                f"({file}); choose a new folder"
            )
        return True
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} is not empty; choose a new folder or pass --overwrite")
    (out_dir / NOTES_DIR).mkdir(parents=True, exist_ok=True)
    _write_atomically(file, json.dumps(job, indent=2, sort_keys=True))
    return False


def is_done(out_dir, shard: int) -> bool:
    return _note(Path(out_dir), shard).is_file()


def write_shard(out_dir, shard: int, total: int, named_records: Iterable, note: dict) -> dict:
    """Writes one shard from (name, record) pairs, then its note (`note` + what was written).
    `note` is read after the records are consumed, so the caller may fill it meanwhile."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out_dir = Path(out_dir)
    final = out_dir / shard_name(shard, total)
    leftovers.remove_stale(out_dir, leftovers.temp_pattern(final), "shard file(s)")
    tmp = out_dir / leftovers.temp_name(final)
    writer, written, shape, text_dim = None, 0, None, None
    try:
        for _, record in named_records:
            if writer is None:
                writer = ArrayRecordWriter(str(tmp), "group_size:1")
            writer.write(records.serialize(record))
            written += 1
            shape, text_dim = list(record["latents"].shape), int(record["context"].shape[1])
        if writer is not None:
            writer.close()
            writer = None
            os.replace(tmp, final)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    note = {
        **note,
        "shard": final.name if written else None,
        "written": written,
        "latent_shape": shape,
        "text_dim": text_dim,
    }
    _write_atomically(_note(out_dir, shard), json.dumps(note, indent=2))
    return note


def read_notes(out_dir, total: int) -> list[dict]:
    """Every shard's note; raises if one is missing (the preparation is unfinished)."""
    out_dir = Path(out_dir)
    missing = [k for k in range(total) if not is_done(out_dir, k)]
    if missing:
        raise ValueError(f"{out_dir}: shards {missing} are unfinished; rerun the preparation")
    return [json.loads(_note(out_dir, k).read_text()) for k in range(total)]


def manifest(notes: Sequence[dict], info: dict) -> dict:
    """dataset.json's content: counts, shapes and the list of all shards."""
    written = [n for n in notes if n["written"]]
    shapes = {json.dumps([n["latent_shape"], n["text_dim"]]) for n in written}
    if len(shapes) > 1:
        raise ValueError(f"shards disagree on record shapes: {sorted(shapes)}")
    shape, text_dim = (written[0]["latent_shape"], written[0]["text_dim"]) if written else (0, 0)
    return {
        "num_records": sum(n["written"] for n in notes),
        "latent_shape": shape,
        "num_blocks": shape[0] if written else 0,
        "text_dim": text_dim,
        **info,
        "shards": [n["shard"] for n in written],
    }
