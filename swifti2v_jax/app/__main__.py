"""python -m swifti2v_jax.app [--host H] [--port N] [--share] [--preset P] [--checkpoints ROOT ...]

Serves the image-to-video page on http://H:N (127.0.0.1:7860 by default: this machine only;
see docs/app.md for a remote machine). --share also asks gradio for a public link (off by
default). The checkpoint flags are sample.py's; finished videos are kept in --output_dir.
Ctrl-C or SIGTERM cancels a run in progress (its unfinished file is deleted) and exits with
128 + the signal number, like sample.py.
"""

from __future__ import annotations

# First, so that Ctrl-C or SIGTERM during the slow imports below stops at once (docs/faults.md).
from swifti2v_jax import startup  # noqa: F401

# isort: split
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from swifti2v_jax import cli, generation


def parse_args(argv: list[str]) -> argparse.Namespace:
    from swifti2v_jax.presets import sample as sample_presets

    parser = argparse.ArgumentParser(
        prog="python -m swifti2v_jax.app", description="SwiftI2V image-to-video web app."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument(
        "--share", action="store_true", help="also serve through a public gradio.live link"
    )
    parser.add_argument(
        "--preset", default="demo", choices=sorted(sample_presets.PRESETS),
        help="the page's default preset",
    )  # fmt: skip
    parser.add_argument(
        "--output_dir", type=Path, default=None,
        help="where finished videos are kept (default: a new temporary directory)",
    )  # fmt: skip
    for name, (_, help_text) in generation.CHECKPOINT_FLAGS.items():
        parser.add_argument(f"--{name}", default=None, help=help_text)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not 0 < args.port < 65536:
        raise cli.UserError(f"--port must be in 1..65535, got {args.port}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no telemetry
    try:
        import gradio
    except ImportError:
        raise cli.UserError('the web app needs gradio: pip install -e ".[app]"') from None
    from swifti2v_jax.app.engine import Engine
    from swifti2v_jax.app.ui import build

    fixed = {field: getattr(args, flag) for flag, (field, _) in generation.CHECKPOINT_FLAGS.items()}
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="swifti2v-app-"))
    engine = Engine(args.preset, fixed, output_dir)
    generation.enable_compilation_cache(engine.config({}).compilation_cache_dir)
    page = build(engine)
    page.queue(default_concurrency_limit=1)
    print(f"swifti2v app: videos go to {output_dir}", file=sys.stderr, flush=True)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(output_dir)],
        show_error=False,
        theme=gradio.themes.Default(),
        prevent_thread_lock=True,
    )
    try:
        while True:  # serving, until Ctrl-C or SIGTERM (cli.run: one line, 128 + signal)
            time.sleep(1.0)
    finally:
        engine.shutdown()  # a run cut short leaves no unfinished file
        page.close()


if __name__ == "__main__":
    cli.run(main, prog="python -m swifti2v_jax.app")
