import jax

# Parity tests compare fp32 against PyTorch fp32: no reduced-precision matmuls anywhere.
jax.config.update("jax_default_matmul_precision", "highest")
