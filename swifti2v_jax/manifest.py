"""Many clips in one run: `sample.py --manifest jobs.jsonl --output-dir OUT` (docs/manifest.md).

Each line of the manifest is a JSON object, one clip: `name` (the output is OUT/<name>.mp4),
and any of `image`, `prompt`, `seed`, `frames`, `resolution`, `negative_prompt`, or a dotted
field of the sample config (`"stage2.steps": 4`) overriding the run's settings for that row;
`prompts` (a list, one prompt per Stage I chunk) is a prompt timeline instead of `prompt`.

The models load once (sampling/residency.py `WarmModels`) and each distinct shape compiles
once: rows are grouped by their plan and sampler settings and run group by group. Every row
goes through `generation.prepare`/`generate`, the path of a lone `sample.py` run, so its mp4
has the same bytes. A finished output is skipped (mp4s appear by rename only when complete)
and a partial one is deleted and redone; a bad row is reported with its line number and
skipped. Under the launcher each process takes the rows `shards_of` (data/shards.py) gives
it, the rule by which training and data preparation split their work, and within a process
rows go round-robin to the local devices (`devices`), one clip per device.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from swifti2v_jax import generation
from swifti2v_jax.data.shards import shards_of

# Row keys that are shorthands for config fields (as sample.py's flags are).
ROW_FIELDS = {
    "image": "image",
    "prompt": "prompt",
    "seed": "seed",
    "frames": "frames",
    "resolution": "resolution",
    "negative_prompt": "negative_prompt",
    "stage1_steps": "stage1.steps",
    "stage2_steps": "stage2.steps",
}
# Set by the manifest itself, never by a row.
RESERVED_FIELDS = ("output", "summary", "overwrite", "compilation_cache_dir")
REPORT_NAME = "manifest-report"


@dataclasses.dataclass(frozen=True)
class Row:
    line: int  # 1-based line in the manifest
    index: int  # position among the manifest's rows (blank lines and comments excluded)
    name: str
    fields: dict[str, Any]  # dotted config field -> value


@dataclasses.dataclass
class Failure:
    line: int
    name: str | None
    message: str
    index: int = -1  # position among the manifest's rows (-1: not a row of the manifest)


def read_rows(path: Path, config) -> tuple[list[Row], list[Failure]]:
    """-> (the rows, one failure per line that is not a valid row). Blank lines and lines
    starting with '#' are skipped."""
    rows: list[Row] = []
    failures: list[Failure] = []
    names: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        index = len(rows) + len(failures)
        try:
            row = _parse_row(text, number, index, config)
        except ValueError as e:
            failures.append(Failure(number, None, str(e), index))
            continue
        if row.name in names:
            failures.append(
                Failure(number, row.name, f"name {row.name!r} is already used on line "
                        f"{names[row.name]}", index)
            )  # fmt: skip
            continue
        names[row.name] = number
        rows.append(row)
    return rows, failures


def _parse_row(text: str, line: int, index: int, config) -> Row:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("a row must be a JSON object")
    name = data.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise ValueError("'name' (the output's file name, without .mp4) is missing")
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name {name!r} must be a plain file name (no '/', no leading '.')")
    if "prompts" in data:  # a prompt timeline (docs/long-video.md): not a preset field
        prompts = data.pop("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("'prompts' must be a list of prompts, one per Stage I chunk")
        data["prompts"] = prompts
    fields = {}
    for key, value in data.items():
        field = ROW_FIELDS.get(key, key)
        if field in RESERVED_FIELDS:
            raise ValueError(f"{key!r} is set by the manifest run, not by a row")
        if field != "prompts" and not _has_field(config, field):
            raise ValueError(f"unknown field {key!r}")
        fields[field] = value
    return Row(line, index, name, fields)


def _has_field(config, field: str) -> bool:
    node = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return not hasattr(node, "keys")


def row_config(base, row: Row, output_dir: Path):
    """The sample config of one row: the run's settings, the row's fields, its output."""
    config = copy.deepcopy(base)
    generation.override(config, dict(row.fields, output=str(output_dir / f"{row.name}.mp4")))
    return config


def shape_key(prepared: generation.Prepared) -> str:
    """Rows with one key run the same programs (same plan and sampler settings)."""
    return repr((prepared.plan, prepared.pipeline.config, prepared.pipeline.paths))


@dataclasses.dataclass
class Report:
    rows: int = 0  # in the whole manifest
    mine: int = 0  # this process's share
    done: list[dict] = dataclasses.field(default_factory=list)
    failed: list[Failure] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    shapes: int = 0
    xla_compilations: int = 0
    seconds: float = 0.0
    process: tuple[int, int] = (0, 1)
    devices: int = 1

    def as_dict(self) -> dict:
        per_row = [d["seconds"] for d in self.done]
        return dict(
            rows=self.rows,
            this_process=self.mine,
            process_index=self.process[0],
            process_count=self.process[1],
            devices=self.devices,
            done=len(self.done),
            failed=len(self.failed),
            skipped=len(self.skipped),
            shapes=self.shapes,
            xla_compilations=self.xla_compilations,
            seconds=round(self.seconds, 3),
            seconds_per_row=round(sum(per_row) / len(per_row), 3) if per_row else None,
            outputs=self.done,
            failures=[dict(line=f.line, name=f.name, error=f.message) for f in self.failed],
            skipped_names=self.skipped,
        )

    def line(self) -> str:
        d = self.as_dict()
        per_row = "" if d["seconds_per_row"] is None else f", {d['seconds_per_row']:.1f} s per row"
        return (
            f"manifest: {d['done']} done, {d['failed']} failed, {d['skipped']} skipped of "
            f"{d['this_process']} rows (process {self.process[0]}/{self.process[1]}, "
            f"{self.devices} device(s)); {d['shapes']} shape(s), {d['xla_compilations']} XLA "
            f"compilations, {d['seconds']:.1f} s{per_row}"
        )


def process_share() -> tuple[int, int]:
    """(this process's index, the process count): the launcher's (launch.py) or JAX's."""
    import os

    from swifti2v_jax import launch

    count = os.environ.get(launch.NUM_PROCESSES)
    if count:
        return int(os.environ[launch.PROCESS_ID]), int(count)
    import jax

    return jax.process_index(), jax.process_count()


def run(
    base_config,
    manifest: Path,
    output_dir: Path,
    *,
    process: tuple[int, int] = (0, 1),
    devices: Sequence[Any] | None = None,
    log: Callable[[str], None] = generation.log,
) -> Report:
    """Generates this process's rows of `manifest` into `output_dir`; -> the report (also
    written to OUT/manifest-report[-pI].json). devices: the local devices to spread rows over
    (None: the default device only)."""
    from swifti2v_jax.sampling.clock import compilations

    start, compiles_before = time.perf_counter(), compilations()
    report = Report(process=process, devices=len(devices) if devices else 1)
    rows, report.failed = read_rows(manifest, base_config)
    report.rows = len(rows) + len(report.failed)
    mine = set(shards_of(process[0], process[1], report.rows))
    report.failed = [f for f in report.failed if f.index in mine]
    rows = [r for r in rows if r.index in mine]
    report.mine = len(rows) + len(report.failed)
    for failure in report.failed:
        log(f"manifest line {failure.line}: {failure.message}; skipped")

    # Every row is checked (inputs, sizes, models' configs) before any model loads.
    groups: dict[str, list[tuple[Row, generation.Prepared]]] = {}
    for row in rows:
        output = output_dir / f"{row.name}.mp4"
        if output.exists():
            report.skipped.append(row.name)
            continue
        try:
            config = row_config(base_config, row, output_dir)
        except (TypeError, ValueError, KeyError) as e:  # a value of the wrong type
            _fail(report, row, e, log)
            continue
        try:
            prepared = generation.prepare(config)
        except generation.prepare_errors() as e:
            _fail(report, row, e, log)
            continue
        groups.setdefault(shape_key(prepared), []).append((row, prepared))
    report.shapes = len(groups)
    queue = [item for group in groups.values() for item in group]  # shape by shape
    lanes = list(devices) if devices else [None]
    if len(lanes) == 1:  # in the main thread: a signal stops the row at once (cli.py)
        _run_lane(queue, lanes[0], report, log)
    else:
        # One thread per device (XLA runs without the GIL); daemons, so that a signal ends
        # the process (their unfinished mp4s are partials, removed by the next run).
        threads = [
            threading.Thread(
                target=_run_lane, args=(queue[i :: len(lanes)], device, report, log), daemon=True
            )
            for i, device in enumerate(lanes)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    report.done.sort(key=lambda d: d["line"])
    report.failed.sort(key=lambda f: f.line)
    report.xla_compilations = compilations() - compiles_before
    report.seconds = time.perf_counter() - start
    name = REPORT_NAME if process[1] == 1 else f"{REPORT_NAME}-p{process[0]}"
    generation._write_json_atomically(output_dir / f"{name}.json", report.as_dict())
    return report


_lock = threading.Lock()


def _fail(report: Report, row: Row, error: BaseException, log) -> None:
    from swifti2v_jax import cli

    message = cli.one_line(error)
    with _lock:
        report.failed.append(Failure(row.line, row.name, message, row.index))
    log(f"manifest line {row.line} ({row.name}): {message}; skipped")


def _run_lane(items, device, report: Report, log) -> None:
    """One device's rows, in order, on models resident on that device."""
    import contextlib

    import jax

    from swifti2v_jax.sampling.residency import WarmModels

    placed = jax.default_device(device) if device is not None else contextlib.nullcontext()
    models = None
    with placed:
        for row, prepared in items:
            pipeline = prepared.pipeline
            if models is None or not models.serves(pipeline.paths, pipeline.config):
                models = WarmModels(pipeline.paths, pipeline.config)
            started = time.perf_counter()
            try:
                summary = generation.generate(prepared, models=models)
            except generation.generate_errors() as e:
                _fail(report, row, e, log)
                continue
            seconds = time.perf_counter() - started
            with _lock:
                report.done.append(
                    dict(line=row.line, name=row.name, output=str(prepared.output),
                         seconds=round(seconds, 3),
                         xla_compilations=summary["xla_compilations"])
                )  # fmt: skip
            log(f"manifest line {row.line}: {generation.closing_line(summary)}")
