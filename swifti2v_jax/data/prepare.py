"""Turns a folder of videos (+ same-stem .txt captions) into ArrayRecord training shards.

    python -m swifti2v_jax.data.prepare --videos DIR --out DIR --vae VAE_DIR \
        --t5 T5_DIR --tokenizer TOKENIZER_DIR --num-frames 81 --height 1408 --width 2560

Per video: read the first `num_frames` frames (center crop + resize), encode them with the VAE
(latents), take a Stage I-like low-res video (Stage I outputs from `--references DIR`, read at
1/`--degrade-factor` of the clip size, or the synthetic pixel degradation of csg/degradation.py),
turn it into z_ref with the hybrid reference builder sampling uses (csg/reference.py: bicubic
upsampling, frame 0 := the clip's first frame, VAE encode), embed the caption with umT5. Videos that
cannot be read or are too short are skipped, counted and listed in the report, never fatal.
Shards are fixed groups of `--records-per-shard` videos, each moved into place once complete;
a rerun into the same --out skips finished ones. At the end `dataset.json` (shapes, counts, all
shards) and `prepare_report.json` (every skipped file and why) are written.

Several processes (swifti2v_jax/launch.py, or every host with --distributed) split the
shards between them and write exactly what one process would (data/shards.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from swifti2v_jax import leftovers
from swifti2v_jax.csg import contract, degradation
from swifti2v_jax.data import records, shards, videos
from swifti2v_jax.data.encoders import Encoders, build_encoders
from swifti2v_jax.models import vae_config

REFERENCE_KINDS = ("synthetic", "precomputed", "none")
DATASET_FILE = "dataset.json"
REPORT_FILE = "prepare_report.json"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    num_frames: int = 81
    height: int = 1408
    width: int = 2560
    frame_stride: int = 1

    def validate(self, temporal_factor: int = 4, spatial_factor: int = 16) -> None:
        vae_config.check_frame_count(self.num_frames, temporal_factor, "num_frames")
        if self.height % spatial_factor or self.width % spatial_factor or self.height < 1:
            raise ValueError(
                f"height and width must be positive multiples of {spatial_factor}, "
                f"got {self.height}x{self.width}"
            )
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    kind: str = "synthetic"
    references_dir: str | None = None  # precomputed Stage I outputs, same stems as the videos
    factor: int = 4  # Stage I size = clip size / factor (synthetic: the downsampling)
    max_noise: float = 0.05

    def __post_init__(self):
        if self.kind not in REFERENCE_KINDS:
            raise ValueError(f"reference kind must be one of {REFERENCE_KINDS}, got {self.kind!r}")
        if self.kind == "precomputed":
            if not self.references_dir or not Path(self.references_dir).is_dir():
                raise ValueError(
                    f"precomputed references need an existing --references folder, "
                    f"got {self.references_dir!r}"
                )


@dataclasses.dataclass
class PrepareReport:
    written: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    missing_captions: list[str] = dataclasses.field(default_factory=list)
    shards: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        line = (
            f"prepared {self.written} clips into {len(self.shards)} shards, skipped "
            f"{len(self.skipped)}, {len(self.missing_captions)} without caption, "
            f"{self.seconds:.1f} s"
        )
        details = [f"  skipped {name}: {reason}" for name, reason in sorted(self.skipped.items())]
        return "\n".join([line, *details])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _reference_low(path: Path, clip: np.ndarray, spec: ReferenceSpec, rng, clip_spec):
    """The Stage I-like low-res video the hybrid reference is built from (None: no z_ref)."""
    if spec.kind == "none":
        return None
    if spec.kind == "synthetic":
        return degradation.pixel_blur_noise(clip, rng, factor=spec.factor, max_noise=spec.max_noise)
    candidates = [
        p
        for p in Path(spec.references_dir).glob(f"{path.stem}.*")
        if p.suffix.lower() in videos.VIDEO_SUFFIXES
    ]
    if not candidates:
        raise videos.VideoError(f"no reference video {path.stem}.* in {spec.references_dir}")
    height, width = clip.shape[1:3]
    return videos.read_clip(
        candidates[0], clip_spec.num_frames, max(1, height // spec.factor),
        max(1, width // spec.factor), clip_spec.frame_stride,
    )  # fmt: skip


@dataclasses.dataclass
class _ReadVideo:
    """A video read, degraded and captioned, waiting for the batched VAE encode."""

    path: Path
    clip: np.ndarray
    low: np.ndarray | None  # the Stage I-like video (None: no z_ref)
    caption: str | None
    context: np.ndarray


def read_video(path, clip_spec: ClipSpec, encoders: Encoders, reference: ReferenceSpec, rng):
    """Everything but the VAE for one video; raises videos.VideoError for an unusable file."""
    clip = videos.read_clip(
        path, clip_spec.num_frames, clip_spec.height, clip_spec.width, clip_spec.frame_stride
    )
    low = _reference_low(path, clip, reference, rng, clip_spec)
    caption = videos.read_caption(path)
    context = records.trim_context(np.asarray(encoders.encode_text([caption or ""]))[0])
    return _ReadVideo(path, clip, low, caption, context)


def encode_videos(items: list[_ReadVideo], encoders: Encoders, dtype: str) -> list[dict]:
    """The records of read videos: one VAE call for all clips, one for all references."""
    clips = np.stack([item.clip for item in items])
    latents = np.asarray(encoders.encode_video(clips))
    z_ref = latents
    if items[0].low is not None:
        z_ref = encoders.reference(np.stack([item.low for item in items]), clips[:, 0])
    return [
        records.make_record(
            latents[i], z_ref[i], item.context, item.caption or "", item.path.stem, dtype
        )
        for i, item in enumerate(items)
    ]


def process_video(path, clip_spec, encoders, reference, rng, dtype) -> dict:
    """One video -> one record; raises videos.VideoError for an unusable file."""
    item = read_video(path, clip_spec, encoders, reference, rng)
    return encode_videos([item], encoders, dtype)[0]


def iterate_records(
    video_dir,
    clip_spec: ClipSpec,
    encoders: Encoders,
    reference: ReferenceSpec,
    report: PrepareReport,
    *,
    dtype: str = "float16",
    seed: int = 0,
    progress: bool = False,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[str, dict]]:
    """(name, record) for every usable video in sorted order (or the videos at `indices` of
    that order); failures go to `report`. Clips are VAE-encoded `encoders.batch` at a time. A
    record's randomness comes from its video's index in the whole folder, never from which
    videos are prepared together."""
    clip_spec.validate(encoders.temporal_factor, encoders.spatial_factor)
    paths = videos.list_videos(video_dir)
    selected = range(len(paths)) if indices is None else indices
    rng_for = lambda index: np.random.default_rng((seed, index))
    last = len(selected) - 1
    if progress:
        from swifti2v_jax import progress as progress_lib

        selected = progress_lib.bar(selected, desc="preparing", unit="video")
    pending: list[_ReadVideo] = []
    for position, index in enumerate(selected):
        path = paths[index]
        try:
            pending.append(read_video(path, clip_spec, encoders, reference, rng_for(index)))
        except videos.VideoError as error:
            report.skipped[path.name] = str(error)
        if pending and (len(pending) == encoders.batch or position == last):
            for item, record in zip(pending, encode_videos(pending, encoders, dtype)):
                if item.caption is None:
                    report.missing_captions.append(item.path.name)
                report.written += 1
                yield item.path.stem, record
            pending = []


def prepare(
    video_dir,
    out_dir,
    *,
    clip_spec: ClipSpec,
    encoders: Encoders,
    reference: ReferenceSpec | None = None,
    records_per_shard: int = 256,
    dtype: str = "float16",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[], None] | None = None,
) -> PrepareReport:
    """Writes OUT/train-KKKKK-of-NNNNN.array_record, dataset.json and prepare_report.json.

    Process `process_index` of `process_count` writes its share of the shards (data/shards.py:
    the same shards for any count) and skips shards a previous run finished; `barrier()`
    returns once every process is done, then process 0 writes the manifest. -> the whole
    report on process 0, this process's part elsewhere.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if dtype not in records.STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {records.STORAGE_DTYPES}, got {dtype!r}")
    paths = videos.list_videos(video_dir)  # a missing folder fails here, before any work
    clip_spec.validate(encoders.temporal_factor, encoders.spatial_factor)
    reference = reference or ReferenceSpec()
    start, report, out_dir = time.time(), PrepareReport(), Path(out_dir)
    info = {"clip": dataclasses.asdict(clip_spec), "reference": dataclasses.asdict(reference)}
    if encoders.latent_statistics is not None:
        info[contract.DATASET_KEY] = encoders.latent_statistics
    job = {"videos": [p.name for p in paths], "records_per_shard": records_per_shard,
           "dtype": dtype, "seed": seed, **info}  # fmt: skip
    shards.start_job(out_dir, job, overwrite)
    total = shards.count(len(paths), records_per_shard)
    for shard in shards.shards_of(process_index, process_count, total):
        if shards.is_done(out_dir, shard):
            continue
        part = PrepareReport()
        named_records = iterate_records(
            video_dir, clip_spec, encoders, reference, part, dtype=dtype, seed=seed,
            progress=progress, indices=shards.videos_of(shard, len(paths), records_per_shard),
        )  # fmt: skip
        note = {"skipped": part.skipped, "missing_captions": part.missing_captions}
        shards.write_shard(out_dir, shard, total, named_records, note)
        report.written += part.written
        report.skipped.update(part.skipped)
        report.missing_captions += part.missing_captions
    if barrier is not None:
        barrier()
    if process_index != 0:
        report.seconds = time.time() - start
        return report
    notes = shards.read_notes(out_dir, total)
    report = PrepareReport(
        written=sum(n["written"] for n in notes),
        skipped={k: v for n in notes for k, v in n["skipped"].items()},
        missing_captions=[name for n in notes for name in n["missing_captions"]],
        shards=[n["shard"] for n in notes if n["written"]],
        seconds=time.time() - start,
    )
    if not report.written:
        raise ValueError(
            f"no usable video in {video_dir}: {len(report.skipped)} skipped\n" + report.summary()
        )
    dataset = shards.manifest(notes, info)
    (out_dir / DATASET_FILE).write_text(json.dumps({**dataset, "dtype": dtype}, indent=2))
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def check_output(out_dir, records_per_shard: int, dtype: str, overwrite: bool) -> None:
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if dtype not in records.STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {records.STORAGE_DTYPES}, got {dtype!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} is not empty; choose a new folder or pass --overwrite")


def write_dataset(
    out_dir,
    named_records: Iterator[tuple[str, dict]],
    report: PrepareReport,
    *,
    records_per_shard: int = 256,
    dtype: str = "float16",
    info: dict | None = None,
    what: str = "no records",
) -> PrepareReport:
    """Consumes (name, record) pairs into shards written to a temporary folder, then moves
    them into OUT with dataset.json (+ `info`) and prepare_report.json: all or nothing."""
    from array_record.python.array_record_module import ArrayRecordWriter

    start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    leftovers.remove_stale(out_dir, ".prepare-*", "data preparation folder(s)")
    tmp = Path(tempfile.mkdtemp(prefix=f".prepare-{leftovers.tag()}-", dir=out_dir))
    try:
        shard_files, writer, in_shard, shape, text_dim = [], None, 0, None, None
        for _, record in named_records:
            if writer is None or in_shard == records_per_shard:
                if writer is not None:
                    writer.close()
                shard_files.append(tmp / f"shard-{len(shard_files):05d}")
                writer = ArrayRecordWriter(str(shard_files[-1]), "group_size:1")
                in_shard = 0
            writer.write(records.serialize(record))
            in_shard += 1
            shape, text_dim = list(record["latents"].shape), int(record["context"].shape[1])
        if writer is not None:
            writer.close()
        if not shard_files:
            raise ValueError(f"{what}: {len(report.skipped)} skipped\n" + report.summary())
        count = len(shard_files)
        for index, file in enumerate(shard_files):
            name = f"train-{index:05d}-of-{count:05d}.array_record"
            os.replace(file, out_dir / name)
            report.shards.append(name)
        report.seconds = time.time() - start
        dataset = {
            "num_records": report.written,
            "latent_shape": shape,
            "num_blocks": shape[0],
            "text_dim": text_dim,
            "dtype": dtype,
            **(info or {}),
            "shards": report.shards,
        }
        (out_dir / DATASET_FILE).write_text(json.dumps(dataset, indent=2))
        (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def read_dataset_info(data_dir) -> dict | None:
    file = Path(data_dir) / DATASET_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="folder of videos (+ same-stem .txt)")
    parser.add_argument("--out", required=True, help="output folder for the shards")
    parser.add_argument("--vae", required=True, help="converted Wan2.2 VAE directory")
    parser.add_argument("--t5", help="converted umT5 directory")
    parser.add_argument("--tokenizer", help="umT5 tokenizer folder (default: T5_DIR/../tokenizer)")
    parser.add_argument("--text-embeddings", help="folder of precomputed <sha1(caption)>.npy")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=1408)
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--reference", choices=REFERENCE_KINDS, default="synthetic")
    parser.add_argument("--references", help="folder of Stage I reference videos (same stems)")
    parser.add_argument(
        "--degrade-factor", type=int, default=4, help="Stage I size = clip size / this"
    )
    parser.add_argument("--degrade-noise", type=float, default=0.05)
    parser.add_argument("--records-per-shard", type=int, default=256)
    parser.add_argument("--dtype", choices=records.STORAGE_DTYPES, default="float16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--distributed", action="store_true", help="join the other hosts (Cloud TPU, SLURM)"
    )
    args = parser.parse_args(argv)
    if args.references and args.reference == "synthetic":
        args.reference = "precomputed"
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from swifti2v_jax import launch

    launch.initialize(args.distributed)  # one process, or one of several (each its share)
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
    try:
        clip_spec = ClipSpec(args.num_frames, args.height, args.width, args.frame_stride)
        reference = ReferenceSpec(
            args.reference, args.references, args.degrade_factor, args.degrade_noise
        )
        clip_spec.validate(spatial_factor=1)  # frame count now; the VAE's factor once loaded
        encoders = build_encoders(
            args.vae,
            t5_dir=args.t5,
            tokenizer_dir=args.tokenizer,
            text_embeddings_dir=args.text_embeddings,
            text_len=args.text_len,
        )
        report = prepare(
            args.videos,
            args.out,
            clip_spec=clip_spec,
            encoders=encoders,
            reference=reference,
            records_per_shard=args.records_per_shard,
            dtype=args.dtype,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=process_count == 1,
            process_index=process_index,
            process_count=process_count,
            barrier=lambda: launch.barrier("prepare: every shard written"),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Process 0 reports the whole run; the others only their share.
    print(report.summary() if process_index == 0 else f"wrote {report.written} clips")
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.data.prepare")
