"""The gradio page: inputs, Generate / Cancel, live status, streaming preview, the video and
its summary. The work is the engine's (app/engine.py); this module only maps the page's values
to config fields and the engine's reports to component updates."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from swifti2v_jax import cli, demo, generation
from swifti2v_jax.app import view
from swifti2v_jax.app.engine import Engine, Failed, Finished, Stopped
from swifti2v_jax.presets import sample as sample_presets

PREVIEW_INTERVAL = 0.2  # seconds between two preview images (the status updates every report)
TEXT_ENCODER = {"host CPU": True, "device": False}  # memory.text_encoder_on_host

INTRO = """# SwiftI2V image-to-video
Upload an image (or leave it empty for the bundled example), describe the motion, and press
**Generate**. The preview shows the frames as they are written; the finished mp4 appears below
with a download button. Runs are queued: one at a time, with your place in the queue shown.
"""

# Page controls whose value comes from the preset (and follows the preset dropdown).
PRESET_FIELDS = (
    "frames", "resolution", "stage1.steps", "stage2.steps", "stage1.guide_scale",
    "stage2.guide_scale", "stage2.ensemble", "memory.text_encoder_on_host",
    "memory.dit_weights", "memory.decode_tile_size",
)  # fmt: skip


def preset_values(engine: Engine, preset: str) -> dict[str, object]:
    """The PRESET_FIELDS of a preset, as the page shows them."""
    config = engine.config({"preset": preset})
    values = {}
    for field in PRESET_FIELDS:
        node = config
        for part in field.split("."):
            node = node[part]
        values[field] = node
    on_host = values["memory.text_encoder_on_host"]
    values["memory.text_encoder_on_host"] = next(k for k, v in TEXT_ENCODER.items() if v == on_host)
    return values


def settings(values: dict[str, object]) -> dict[str, object]:
    """The page's values (by config field) -> the config fields to set (None: keep)."""
    result = dict(values)
    result["resolution"] = str(values["resolution"] or "").strip() or None
    result["memory.text_encoder_on_host"] = TEXT_ENCODER.get(values["memory.text_encoder_on_host"])
    result["image"] = values["image"] or None  # None: the bundled example image
    return result


def build(engine: Engine) -> gr.Blocks:
    initial = preset_values(engine, engine.preset)
    with gr.Blocks(title="SwiftI2V") as page:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                # A plain file input: every upload reaches the same checks as sample.py's
                # --image (an image input refuses some files with gradio's own message).
                image = gr.File(label="Image", file_count="single", elem_id="image")
                prompt = gr.Textbox(label="Prompt", value=demo.EXAMPLE_PROMPT, lines=2)
                negative_prompt = gr.Textbox(
                    label="Negative prompt", info="empty: Wan2.2's default (used with guidance)"
                )
                with gr.Row():
                    frames = gr.Number(
                        initial["frames"], label="Frames", precision=0, elem_id="frames",
                        info="k x the VAE's temporal stride + 1 (Wan2.2: 4k+1, e.g. 81)",
                    )  # fmt: skip
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                preset = gr.Dropdown(
                    choices=sorted(sample_presets.PRESETS), value=engine.preset, label="Preset",
                    info="sets the fields below; the 2K presets need the converted checkpoints "
                    "given at start-up",
                )  # fmt: skip
                with gr.Accordion("Advanced", open=False):
                    resolution = gr.Textbox(
                        initial["resolution"], label="Resolution",
                        info="WIDTHxHEIGHT (multiples of 32) or auto",
                    )  # fmt: skip
                    with gr.Row():
                        stage1_steps = gr.Number(
                            initial["stage1.steps"], label="Stage I steps", precision=0
                        )
                        stage2_steps = gr.Number(
                            initial["stage2.steps"], label="Stage II steps", precision=0
                        )
                    with gr.Row():
                        stage1_guidance = gr.Number(
                            initial["stage1.guide_scale"], label="Stage I guidance (1: no CFG)"
                        )
                        stage2_guidance = gr.Number(
                            initial["stage2.guide_scale"], label="Stage II guidance (1: no CFG)"
                        )
                    ensemble = gr.Number(
                        initial["stage2.ensemble"], precision=0,
                        label="Stage II ensemble (samples averaged per segment)",
                    )  # fmt: skip
                    text_on_host = gr.Radio(
                        list(TEXT_ENCODER), value=initial["memory.text_encoder_on_host"],
                        label="Text encoder runs on",
                    )  # fmt: skip
                    dit_weights = gr.Radio(
                        ["native", "int8", "fp8"], value=initial["memory.dit_weights"],
                        label="DiT weights (int8 / fp8: quantized at load)",
                    )  # fmt: skip
                    decode_tile_size = gr.Number(
                        initial["memory.decode_tile_size"], precision=0,
                        label="Stage II decode tile size (latent pixels, 0: untiled)",
                    )  # fmt: skip
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=1):
                status = gr.Markdown("Ready.", elem_id="status")
                preview = gr.Image(
                    label="Preview: the frames written so far", interactive=False,
                    elem_id="preview", format="png", height=180,
                )  # fmt: skip
                video = gr.Video(label="Video", interactive=False, elem_id="video")
                download = gr.DownloadButton(
                    "Download mp4", visible=False, elem_id="download", variant="secondary"
                )
                summary = gr.Markdown(elem_id="summary")

        fields = {
            preset: "preset", image: "image", prompt: "prompt",
            negative_prompt: "negative_prompt", frames: "frames", seed: "seed",
            resolution: "resolution", stage1_steps: "stage1.steps",
            stage2_steps: "stage2.steps", stage1_guidance: "stage1.guide_scale",
            stage2_guidance: "stage2.guide_scale", ensemble: "stage2.ensemble",
            text_on_host: "memory.text_encoder_on_host", dit_weights: "memory.dit_weights",
            decode_tile_size: "memory.decode_tile_size",
        }  # fmt: skip
        by_field = {field: component for component, field in fields.items()}

        def enqueue(request: gr.Request):
            engine.queued(request.session_hash or "")

        def run(values: dict, request: gr.Request):
            session = request.session_hash or ""
            if not engine.dequeued(session):
                yield {status: "Cancelled before it started."}
                return
            yield {
                status: "Checking the inputs...",
                preview: None,
                video: None,
                download: gr.DownloadButton(value=None, visible=False),
                summary: "",
            }
            upload = values[image]
            try:
                prepared = engine.prepare(settings({fields[c]: v for c, v in values.items()}))
            except generation.prepare_errors() as e:
                message = cli.one_line(e)
                if upload:  # the server's temporary path means nothing to the user
                    message = message.replace(str(upload), Path(upload).name)
                yield {status: f"**Error:** {message}"}
                return
            job = engine.start(prepared, session)
            try:
                yield from follow(job)
            finally:
                job.cancel()  # the page went away or the event was cancelled: stop the run

        def follow(job):
            pace, shown = view.Pace(), view.Preview()
            last_preview = 0.0
            for event in job.updates():
                if isinstance(event, Finished):
                    path = str(event.output)
                    total = event.summary["seconds"]["total"]
                    yield {
                        status: f"Done in {total:.1f} s: {event.output.name}",
                        preview: shown.image(),
                        video: path,
                        download: gr.DownloadButton(value=path, visible=True),
                        summary: view.summary_markdown(event.summary),
                    }
                elif isinstance(event, Stopped):
                    yield {status: view.cancelled_line(event.elapsed)}
                elif isinstance(event, Failed):
                    yield {status: f"**Error:** {event.message}"}
                else:
                    pace.update(event)
                    update = {status: view.status_line(event, pace.seconds_left(event))}
                    if event.new_frames is not None:
                        shown.add(event.new_frames)
                        now = time.monotonic()
                        if now - last_preview >= PREVIEW_INTERVAL:
                            update[preview], last_preview = shown.image(), now
                    yield update

        def stop(request: gr.Request):
            """Stops this page's run (its own last update says so) or its queued requests."""
            session = request.session_hash or ""
            if engine.cancel(session) is not None:
                return gr.skip()
            return "Cancelling the queued run." if engine.drop_waiting(session) else gr.skip()

        preset.change(
            lambda name: [preset_values(engine, name)[f] for f in PRESET_FIELDS],
            preset, [by_field[f] for f in PRESET_FIELDS],
        )  # fmt: skip
        # Not gradio's `cancels=`: a cancelled event shows "Error" on its outputs. The engine
        # stops the run (its generator then says "Cancelled") or drops the queued request.
        generate.click(enqueue, None, None, queue=False, show_progress="hidden").then(
            run, set(fields), [status, preview, video, download, summary],
            concurrency_limit=1, concurrency_id="generate", show_progress="full",
            show_progress_on=[status],
        )  # fmt: skip
        cancel.click(stop, None, status, queue=False, show_progress="hidden")
    return page
