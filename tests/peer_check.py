"""A process of a 2-process JAX run that joins (swifti2v_jax/launch.py), gathers once, says
`ready` and then sleeps (as a long compile would, away from any collective), for the fault
tests in tests/test_faults.py: what happens to it when its launcher or its peer dies."""

from __future__ import annotations

import time

from swifti2v_jax import cli, launch


def main(argv) -> int:
    del argv
    launch.initialize()
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    multihost_utils.process_allgather(jnp.ones(2))
    print("ready", flush=True)
    time.sleep(600)
    return 0


if __name__ == "__main__":
    cli.run(main, prog="peer_check.py")
