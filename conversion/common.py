"""Shared pieces of the PyTorch -> JAX converters: tensor readers, key checks, layout transforms.

Converters read tensors one at a time (safetensors, or `.pth` zip archives read without
torch), so converting a 5B/14B model never holds two full copies in memory.
"""

from __future__ import annotations

import json
import pickle
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message says what is wrong and what to do."""


def corrupt(path, detail: str) -> ConversionError:
    """The one message for a damaged checkpoint file (cut short, bad header, bad archive)."""
    return ConversionError(f"{path} is corrupt or truncated ({detail}); download or copy it again")


# ---------------------------------------------------------------------------------------------
# Tensor sources: a mapping name -> shape, and lazy reads of one tensor at a time.


class TensorSource(Mapping):
    """Read-only mapping from tensor name to a lazily loaded numpy array."""

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError


class SafetensorsSource(TensorSource):
    """One or more safetensors files (sharded with an index json, or a single file)."""

    def __init__(self, files: Iterable[Path]):
        from safetensors import safe_open

        self._handles = {}
        self._where: dict[str, Path] = {}
        for file in files:
            try:
                handle = safe_open(str(file), framework="numpy")
            except Exception as e:  # SafetensorError: bad header, file shorter than it says
                raise corrupt(file, _first_line(e)) from None
            self._handles[file] = handle
            for key in handle.keys():
                self._where[key] = file

    @classmethod
    def from_dir(cls, directory: Path) -> SafetensorsSource:
        index = sorted(directory.glob("*.safetensors.index.json"))
        if index:
            index_json = read_json(index[0])
            try:
                weight_map = index_json["weight_map"]
                files = sorted({directory / name for name in weight_map.values()})
            except (KeyError, TypeError, AttributeError):
                raise corrupt(index[0], "no 'weight_map' of file names") from None
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConversionError(f"shards listed in {index[0]} are missing: {missing}")
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"no .safetensors files in {directory}")
        return cls(files)

    def _slice(self, name):
        return self._handles[self._where[name]].get_slice(name)

    def shape(self, name):
        return tuple(self._slice(name).get_shape())

    def __getitem__(self, name):
        if name not in self._where:
            raise KeyError(name)
        try:
            return self._handles[self._where[name]].get_tensor(name)
        except TypeError:  # numpy framework cannot express bf16 in some versions
            return _read_safetensors_raw(self._where[name], name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self):
        return len(self._where)


_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
}


def _read_safetensors_raw(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        info = header[name]
        start, end = info["data_offsets"]
        f.seek(8 + header_len + start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise corrupt(path, f"tensor {name} is cut short")
    return np.frombuffer(data, _SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()


# PyTorch `torch.save` zip archives, read without importing torch: the pickle names storages
# by key; each storage is a raw little-endian file `<archive>/data/<key>` inside the zip.
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "BoolStorage": np.bool_,
}


class _LazyTensor:
    def __init__(self, archive, storage, offset, shape, stride):
        self.archive, self.storage, self.offset = archive, storage, offset
        self.shape, self.stride = tuple(shape), tuple(stride)

    def load(self) -> np.ndarray:
        dtype, key = self.storage
        try:
            with self.archive.zip.open(f"{self.archive.prefix}/data/{key}") as f:
                flat = np.frombuffer(f.read(), dtype=dtype)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as e:
            raise corrupt(self.archive.path, f"storage {key}: {_first_line(e)}") from None
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
        if min(self.shape, default=1) > 0 and flat.size < needed:
            raise corrupt(self.archive.path, f"storage {key} holds {flat.size} of {needed} values")
        itemsize = flat.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
        ).copy()


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, file, archive):
        super().__init__(file)
        self.archive = archive

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _TORCH_STORAGE_DTYPES[name]
        if module == "torch" and name.endswith("Storage"):
            raise ConversionError(f"unsupported tensor storage type torch.{name}")
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name == "dtype":
            return str
        raise ConversionError(
            f"{self.archive.path}: refusing to load {module}.{name} (not a state dict)"
        )

    def _rebuild_tensor(self, storage, offset, shape, stride, *args):
        return _LazyTensor(self.archive, storage, offset, shape, stride)

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        _, storage_type, key, _, _ = pid
        dtype = (
            storage_type
            if isinstance(storage_type, type)
            else _TORCH_STORAGE_DTYPES["FloatStorage"]
        )
        return (dtype, key)


class TorchPickleSource(TensorSource):
    """A `torch.save`d state dict (zip format), read lazily without torch."""

    def __init__(self, path: Path):
        self.path = path
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic.startswith(b"PK"):  # a zip whose end (the central directory) is missing
                raise corrupt(path, "the zip archive ends early")
            raise ConversionError(
                f"{path} is not a torch zip checkpoint (re-save it with torch>=1.6)"
            )
        try:
            self.zip = zipfile.ZipFile(path)
            pkl = [n for n in self.zip.namelist() if n.endswith("data.pkl")]
            if not pkl:
                raise ConversionError(f"{path} has no data.pkl; not a torch checkpoint")
            self.prefix = pkl[0][: -len("/data.pkl")]
            with self.zip.open(pkl[0]) as f:
                state = _TorchUnpickler(f, self).load()
        except (zipfile.BadZipFile, EOFError, zlib.error, pickle.UnpicklingError) as e:
            raise corrupt(path, _first_line(e)) from None
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        self._tensors = {k: v for k, v in state.items() if isinstance(v, _LazyTensor)}

    def shape(self, name):
        return self._tensors[name].shape

    def __getitem__(self, name):
        return self._tensors[name].load()

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)


class RenamedSource(TensorSource):
    """A lazy view of `source` under new names ({new: old})."""

    def __init__(self, source: TensorSource, names: Mapping[str, str]):
        self.source, self.names = source, dict(names)

    def shape(self, name):
        return tuple(self.source.shape(self.names[name]))

    def __getitem__(self, name):
        return self.source[self.names[name]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


class DictSource(TensorSource):
    """An in-memory state dict (numpy arrays or anything np.asarray accepts, e.g. torch tensors)."""

    def __init__(self, tensors: Mapping):
        self.tensors = dict(tensors)

    def shape(self, name):
        return tuple(self.tensors[name].shape)

    def __getitem__(self, name):
        value = self.tensors[name]
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().float().numpy()
        return np.asarray(value)

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)


def read_json(path: Path):
    """A checkpoint's JSON file (config, index); a damaged one is named as corrupt."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt(path, f"not valid JSON: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def open_source(path: Path) -> TensorSource:
    """A directory of safetensors, one .safetensors file, or a .pth/.pt torch archive."""
    path = Path(path)
    if path.is_dir():
        return SafetensorsSource.from_dir(path)
    if path.suffix == ".safetensors":
        return SafetensorsSource([path])
    if path.suffix in (".pth", ".pt", ".bin"):
        return TorchPickleSource(path)
    raise ConversionError(f"do not know how to read {path}")


# ---------------------------------------------------------------------------------------------
# Key checks


def check_keys(
    source: TensorSource,
    expected_shapes: Mapping[str, tuple[int, ...]],
    what: str,
    ignore: Iterable[str] = (),
) -> None:
    """Refuses missing, unexpected and mis-shaped tensors with one message listing all of them."""
    ignore = set(ignore)
    have = {k for k in source if k not in ignore}
    missing = sorted(set(expected_shapes) - have)
    unexpected = sorted(have - set(expected_shapes))
    mismatched = [
        f"{k}: checkpoint {source.shape(k)} vs expected {tuple(expected_shapes[k])}"
        for k in sorted(have & set(expected_shapes))
        if tuple(source.shape(k)) != tuple(expected_shapes[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if mismatched:
        problems.append(f"wrong shapes ({len(mismatched)}): {'; '.join(mismatched[:20])}")
    if problems:
        raise ConversionError(f"{what}: " + " | ".join(problems))


# ---------------------------------------------------------------------------------------------
# Layout transforms (PyTorch -> Flax)


def linear(w: np.ndarray) -> np.ndarray:
    """[out, in] -> [in, out]."""
    return np.ascontiguousarray(w.T)


def conv3d(w: np.ndarray) -> np.ndarray:
    """[O, I, D, H, W] -> [D, H, W, I, O]."""
    return np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0))


def conv2d(w: np.ndarray) -> np.ndarray:
    """[O, I, H, W] -> [H, W, I, O]."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


DTYPES = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def cast(x: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(x.dtype, np.floating) or x.dtype == ml_dtypes.bfloat16:
        return x.astype(dtype, copy=False)
    return x


def set_nested(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    if path[-1] in tree:
        raise ConversionError(f"two tensors map to the same parameter {'/'.join(path)}")
    tree[path[-1]] = value


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out
