"""What the browser test (tests/test_app_browser.py) needs and this machine lacks, in one line."""

from __future__ import annotations

import importlib.util
import shutil

BROWSER_MODULES = {"gradio": "app", "playwright": "test"}  # module -> the extra that installs it


def missing_for_browser_test() -> str | None:
    """None when gradio, playwright and a `chromium` on PATH are all there."""
    missing = [name for name in BROWSER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        extras = ",".join(sorted({BROWSER_MODULES[name] for name in missing}))
        return f"{', '.join(missing)} not installed (pip install -e '.[{extras}]')"
    if shutil.which("chromium") is None:
        return "no chromium on PATH (Debian: apt-get install chromium)"
    return None
