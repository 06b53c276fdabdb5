"""Optional second phase of the demo VAE: the decoder alone, the encoder frozen.

    python train.py --config=configs/demo/vae_decoder.py --workdir runs/demo/vae_decoder \
        --config.init_checkpoint=runs/demo/vae/model

The encoder (and so every latent, and every data set already encoded with it) is unchanged,
so this can run while the DiTs train on those latents; it only raises the reconstruction
ceiling of what sampling decodes. The export recomputes the same latent statistics.
"""

from configs.demo import vae


def get_config():
    config = vae.get_config()
    config.train = "decoder"
    config.init_checkpoint = ""  # required: the phase-one VAE (WORKDIR/model)
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 50
    config.num_steps = 1500
    return config
