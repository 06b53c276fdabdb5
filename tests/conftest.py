import importlib.util
import os

import jax
import pytest

# Parity tests compare fp32 against PyTorch fp32: no reduced-precision matmuls anywhere.
jax.config.update("jax_default_matmul_precision", "highest")

# The PyTorch oracles of the parity tests (the `test` extra in pyproject.toml). Their modules
# `importorskip` them; a session without them stops at its start, naming what to install,
# instead of passing ~95 parity tests by skipping them.
ORACLES = ("torch", "diffusers", "transformers")
ALLOW_MISSING = "SWIFTI2V_ALLOW_MISSING_EXTRAS"


def _missing_oracles() -> list[str]:
    missing = []
    for name in ORACLES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module blocked in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


# .ci/smoke sets this on the newest JAX/Flax/Orbax: a DeprecationWarning raised on a line of this
# repository fails the test (pyproject ignores DeprecationWarning otherwise).
DEPRECATIONS = "SWIFTI2V_DEPRECATIONS_ARE_ERRORS"
OWN_MODULES = r"(swifti2v_jax|conversion|benchmarks|configs|tests|train|sample)(\..*)?"


def pytest_configure(config):
    if os.environ.get(DEPRECATIONS) == "1":
        config.addinivalue_line("filterwarnings", f"error::DeprecationWarning:{OWN_MODULES}")
    missing = _missing_oracles()
    if missing and os.environ.get(ALLOW_MISSING) != "1":
        raise pytest.UsageError(
            f"the parity tests need the test extra (missing: {', '.join(missing)}): "
            f"pip install -e '.[test]'  (or set {ALLOW_MISSING}=1 to skip them)"
        )


def pytest_report_header(config):
    from tests.browser_check import missing_for_browser_test

    lines = []
    missing = _missing_oracles()
    if missing:
        lines.append(
            f"parity tests SKIPPED: {', '.join(missing)} not installed (pip install -e '.[test]')"
        )
    browser = missing_for_browser_test()
    if browser:  # tests/test_app_browser.py: skipped here, a failure in CI (CI=true)
        lines.append(f"web app browser test SKIPPED: {browser}")
    return lines or None
