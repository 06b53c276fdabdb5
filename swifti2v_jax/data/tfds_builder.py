"""A tensorflow-datasets builder for the same video-folder format as prepare.py.

Runs without TensorFlow (file_format='array_record'; docs/design.md, "Facts checked on this
machine"): `download_and_prepare()`
encodes every usable video of the folder with the given encoders, and `as_data_source()`
returns grain-ready random-access sources whose records feed `loader.make_loader` directly.

    builder = VideoFolderBuilder(video_dir=..., clip_spec=..., encoders=..., data_dir=...)
    builder.download_and_prepare()
    source = builder.as_data_source()["train"]
    print(builder.report.summary())  # skipped videos and why (after a fresh preparation)
"""

from __future__ import annotations

import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from swifti2v_jax.data import prepare, records


class VideoFolderBuilder(tfds.core.GeneratorBasedBuilder):
    """Precomputed latents, references and text embeddings of a folder of videos."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Latents, stage-transition references and umT5 embeddings."}

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' default probes the package with the `importlib_resources` backport, which is
        # not installed here; the file path is what it would find anyway.
        return epath.Path(inspect.getfile(cls))

    def __init__(
        self,
        *,
        video_dir,
        clip_spec: prepare.ClipSpec,
        encoders: prepare.Encoders,
        reference: prepare.ReferenceSpec | None = None,
        dtype: str = "float16",
        seed: int = 0,
        data_dir=None,
        **kwargs,
    ):
        if dtype not in records.STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {records.STORAGE_DTYPES}, got {dtype!r}")
        clip_spec.validate(encoders.temporal_factor, encoders.spatial_factor)
        self.video_dir = video_dir
        self.clip_spec = clip_spec
        self.encoders = encoders
        self.reference = reference or prepare.ReferenceSpec()
        self.storage_dtype = dtype
        self.seed = seed
        self.report = prepare.PrepareReport()
        kwargs.setdefault("file_format", "array_record")
        super().__init__(data_dir=data_dir, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        dtype = np.dtype(self.storage_dtype)
        # Several unknown dimensions need byte encoding (decoded with numpy, no TensorFlow).
        tensor = lambda rank: tfds.features.Tensor(
            shape=(None,) * rank, dtype=dtype, encoding=tfds.features.Encoding.BYTES
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "latents": tensor(4),
                    "reference": tensor(4),
                    "context": tensor(2),
                    "caption": tfds.features.Text(),
                    "name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded: the videos are local
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from prepare.iterate_records(
            self.video_dir,
            self.clip_spec,
            self.encoders,
            self.reference,
            self.report,
            dtype=self.storage_dtype,
            seed=self.seed,
        )
