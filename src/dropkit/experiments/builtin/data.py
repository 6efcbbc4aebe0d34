"""Datasets for the experiments: MNIST-1D (canonical and large), sklearn digits, user .npz.

Everything here ships with the project or is generated offline: MNIST-1D is generated
procedurally as the ``mnist1d`` package makes it (the canonical set is 5 000 samples with seed
42, split 4 000 / 1 000; `dropkit.experiments.builtin.mnist1d_generator` makes the same arrays
faster), and ``sklearn.datasets.load_digits`` is bundled with scikit-learn. Generated arrays are
cached on disk (written atomically, so an interrupted run never leaves a half-written cache file).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dropkit._checks import check_int
from dropkit._optional import optional_imports
from dropkit.experiments.base.io import atomic_writer

__all__ = [
    "Dataset",
    "default_cache_dir",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "load_npz",
    "split_validation",
]

NPZ_KEYS = ("x", "y", "x_test", "y_test")
LARGE_MNIST1D_SAMPLES = 50_000  # 40 000 train / 10 000 test; about 2 s to generate once


@dataclass(frozen=True)
class Dataset:
    """A classification dataset as tensors: float32 inputs, int64 labels in ``[0, n_classes)``.

    What the built-in settings and [`dropkit.advise`][dropkit.experiments.advise.advise] train
    on. The loaders (``load_dataset`` by name or ``.npz`` path, ``load_npz``) check the arrays
    and convert them; building one directly checks nothing, so give it tensors of the dtypes
    and shapes below. The test split is only evaluated, never trained on (``advise`` holds a
    validation split out of the training split instead).

    Attributes:
        name: A name for messages and records (e.g. ``"digits"``, the ``.npz`` file's stem).
        x: Training inputs, float32, shape ``(N, features...)``.
        y: Training labels, int64 class indices, shape ``(N,)``.
        x_test: Test inputs, float32, with the same per-sample shape as ``x``.
        y_test: Test labels, int64 class indices.
        n_classes: The number of classes (the loaders use the largest label + 1).

    Examples:
        ```python
        import torch
        from dropkit.experiments import Dataset

        x = torch.randn(1000, 20)
        y = (x[:, 0] > 0).long()
        data = Dataset("toy", x[:800], y[:800], x[800:], y[800:], n_classes=2)
        ```
    """

    name: str
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        """The size of a sample's second dimension, ``x.shape[1]`` (the features of flat
        inputs)."""
        return int(self.x.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x.shape)}, test={tuple(self.x_test.shape)}, "
            f"n_classes={self.n_classes})"
        )


_SPLITS = (("train", "x", "y"), ("test", "x_test", "y_test"))
NUMERIC_KINDS = "biuf"  # bool, signed / unsigned int, float


def _check_numeric(name: str, key: str, array: np.ndarray) -> None:
    if array.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(
            f"dataset {name!r}: {key} holds {array.dtype} values, not numbers; features and "
            "labels must be numeric arrays (convert strings or objects with "
            "np.asarray(values, dtype=np.float32) for features, class indices 0..C-1 for labels)"
        )


def _check_features(name: str, split: str, key: str, inputs: np.ndarray) -> None:
    """Features must be finite once cast to float32 (what training sees)."""
    nan = int(np.isnan(inputs).sum())
    inf = int(np.isinf(inputs).sum())
    if nan or inf:
        found = " and ".join(
            text for count, text in ((nan, f"{nan} NaN"), (inf, f"{inf} infinite")) if count
        )
        raise ValueError(
            f"dataset {name!r}: the {split} features ({key}) hold {found} value(s) of "
            f"{inputs.size} (as float32, whose range ends at ±3.4e38); drop those samples or fill "
            f"them in before saving, e.g. keep = np.isfinite({key}).reshape(len({key}), -1)"
            f".all(axis=1), or np.nan_to_num({key})"
        )


def _check_labels(name: str, split: str, key: str, labels: np.ndarray) -> None:
    """Labels must be class indices: finite, integer-valued, >= 0 (``n_classes`` is max + 1)."""
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        if not finite.all():
            raise ValueError(
                f"dataset {name!r}: the {split} labels ({key}) hold {int((~finite).sum())} NaN or "
                "infinite value(s); labels must be class indices 0, 1, ..., C-1"
            )
        fractional = labels != np.round(labels)
        if fractional.any():
            raise ValueError(
                f"dataset {name!r}: the {split} labels ({key}) hold {int(fractional.sum())} "
                f"non-integer value(s), e.g. {labels[fractional][0].item()!r}; labels must be "
                "class indices 0, 1, ..., C-1 (1.0 is fine, 1.5 is not)"
            )
    negative = labels < 0
    if negative.any():
        raise ValueError(
            f"dataset {name!r}: the {split} labels ({key}) hold {int(negative.sum())} negative "
            f"value(s), e.g. {labels[negative][0].item()!r}; labels must be class indices >= 0 "
            "(0, 1, ..., C-1)"
        )


def _as_dataset(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    """Validate ``x, y, x_test, y_test`` (shapes, numeric, finite features, class-index labels)."""
    raw = {key: np.asarray(arrays[key]) for key in NPZ_KEYS}
    for key in NPZ_KEYS:
        _check_numeric(name, key, raw[key])
    for split, x_key, y_key in _SPLITS:
        inputs, labels = raw[x_key], raw[y_key]
        if inputs.ndim < 2 or labels.ndim != 1 or len(inputs) != len(labels) or len(labels) == 0:
            raise ValueError(
                f"dataset {name!r}: {split} inputs have shape {tuple(inputs.shape)} and labels "
                f"{tuple(labels.shape)}; expected inputs (N, features...) and labels (N,) "
                "with the same N > 0"
            )
    if raw["x"].shape[1:] != raw["x_test"].shape[1:]:
        raise ValueError(
            f"dataset {name!r}: train inputs are {tuple(raw['x'].shape[1:])} per sample but test "
            f"inputs are {tuple(raw['x_test'].shape[1:])}; both splits need the same feature shape"
        )
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused below
        features = {key: raw[key].astype(np.float32) for key in ("x", "x_test")}
    for split, x_key, y_key in _SPLITS:
        _check_features(name, split, x_key, features[x_key])
        _check_labels(name, split, y_key, raw[y_key])
    x, x_test = (torch.as_tensor(features[key]) for key in ("x", "x_test"))
    y, y_test = (torch.as_tensor(raw[key].astype(np.int64)) for key in ("y", "y_test"))
    return Dataset(name, x, y, x_test, y_test, int(torch.cat([y, y_test]).max()) + 1)


def default_cache_dir() -> Path:
    """``$DROPKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/dropkit`` (``~/.cache/dropkit``)."""
    if "DROPKIT_CACHE" in os.environ:
        return Path(os.environ["DROPKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dropkit"


def _generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    with optional_imports("mnist1d", "data", "to generate MNIST-1D"):
        from dropkit.experiments.builtin.mnist1d_generator import make_mnist1d

        return make_mnist1d(num_samples, seed)  # imports mnist1d itself


def load_mnist1d(
    num_samples: int = 5000, seed: int = 42, cache_dir: str | Path | None = None
) -> Dataset:
    """MNIST-1D, generated offline: 40-long signals, 10 classes, 80 % train / 20 % test.

    The defaults give the canonical set (4 000 train / 1 000 test). A larger ``num_samples``
    with another ``seed`` gives a large variant (e.g. 50 000 samples, seed 0) for the
    underfitting regime. Generated arrays are cached in ``cache_dir`` (default
    `default_cache_dir()`) as ``mnist1d_n{num_samples}_seed{seed}.npz``.
    """
    num_samples = check_int(num_samples, "num_samples", 20, " (10 classes)")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"mnist1d_n{num_samples}_seed{seed}.npz"
    if path.exists():
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in NPZ_KEYS}
    else:
        arrays = _generate_mnist1d(num_samples, seed)
        with atomic_writer(path) as handle:  # readable by colleagues sharing the cache
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # the stub lets ** reach allow_pickle
    return _as_dataset(f"mnist1d-n{num_samples}-seed{seed}", arrays)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """sklearn's 8x8 digits (1 797 samples, 64 features scaled to [0, 1]), stratified split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
    with optional_imports("sklearn", "data", "(scikit-learn) for the digits dataset"):
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    bunch = sklearn_digits()
    x = bunch.data / 16.0
    x, x_test, y, y_test = train_test_split(
        x, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    return _as_dataset("digits", {"x": x, "y": y, "x_test": x_test, "y_test": y_test})


def _not_npz(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable .npz of arrays x, y, x_test, y_test ({reason}); write one "
        "with np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)"
    )


def load_npz(path: str | Path) -> Dataset:
    """A user dataset: an ``.npz`` holding arrays ``x``, ``y``, ``x_test``, ``y_test``.

    Raises ``FileNotFoundError`` if it does not exist, ``KeyError`` if an array is missing and
    ``ValueError`` for anything else: a file that is not a (complete) zip of ``.npy`` arrays, an
    array of pickled objects (never unpickled), or data `_as_dataset` refuses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        # numpy reads a file that is neither a zip nor .npy as a pickle and refuses it
        # ("pickled (object) data"): random bytes, a text file, a truncated download.
        if "pickle" in str(err):
            reason = "neither a zip archive nor an .npy file"
        elif isinstance(err, zipfile.BadZipFile):
            reason = f"a truncated or damaged zip archive: {err}"
        else:
            reason = f"{type(err).__name__}: {err}"
        raise _not_npz(path, reason) from err
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise _not_npz(path, "a single .npy array, not an archive of named arrays")
    with stored:
        missing = [key for key in NPZ_KEYS if key not in stored.files]
        if missing:
            raise KeyError(
                f"{path} lacks the array(s) {missing}; a dataset .npz needs x, y, x_test, "
                f"y_test (found {sorted(stored.files)}), e.g. np.savez(path, x=x, y=y, "
                "x_test=x_test, y_test=y_test)"
            )
        arrays = {}
        for key in NPZ_KEYS:
            try:
                arrays[key] = stored[key]
            except ValueError as err:
                if "allow_pickle" in str(err) or "Object arrays" in str(err):
                    raise ValueError(
                        f"{path}: array {key!r} holds pickled objects; save plain numeric arrays "
                        "with np.savez (e.g. np.asarray(values, dtype=np.float32))"
                    ) from err
                raise _not_npz(path, f"array {key!r}: {err}") from err
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise _not_npz(path, f"array {key!r}: {type(err).__name__}: {err}") from err
    return _as_dataset(path.stem, arrays)


def load_dataset(spec: str, cache_dir: str | Path | None = None) -> Dataset:
    """A dataset by name: ``mnist1d`` (canonical), ``mnist1d-large`` (50 000 samples, seed 0),
    ``mnist1d:N:SEED``, ``digits``, or a path to an ``.npz`` file."""
    if spec == "mnist1d":
        return load_mnist1d(cache_dir=cache_dir)
    if spec == "mnist1d-large":
        return load_mnist1d(LARGE_MNIST1D_SAMPLES, seed=0, cache_dir=cache_dir)
    if spec.startswith("mnist1d:"):
        parts = spec.split(":")
        if len(parts) != 3 or not all(part.isdigit() for part in parts[1:]):
            raise ValueError(
                f"dataset {spec!r}: write mnist1d:NUM_SAMPLES:SEED, e.g. mnist1d:50000:0"
            )
        return load_mnist1d(int(parts[1]), int(parts[2]), cache_dir=cache_dir)
    if spec == "digits":
        return load_digits()
    if spec.endswith(".npz"):
        return load_npz(spec)
    raise ValueError(
        f"unknown dataset {spec!r}: use 'mnist1d', 'mnist1d-large', 'mnist1d:N:SEED', 'digits' "
        "or a path to an .npz file with x, y, x_test, y_test"
    )


def split_validation(data: Dataset, fraction: float) -> Dataset:
    """The last ``fraction`` of the training split as the test split (the real one stays unseen).

    How [`advise`][dropkit.experiments.advise.advise] carves its validation split: the probes
    train on the rest and are evaluated on it, so the real test split is never touched. The
    split is by position (no shuffling), so shuffle a dataset whose order means something.

    Args:
        data: The dataset.
        fraction: The share of the training samples held out, in (0, 1); at least one sample.

    Returns:
        A dataset named ``"<name>[train-<n>]"`` whose training split is the first samples and
            whose test split is the last ``round(fraction * N)`` (at least 1).

    Raises:
        ValueError: If ``fraction`` is not in (0, 1), or leaves no training sample.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction={fraction} must lie in (0, 1)")
    n_val = max(1, round(fraction * len(data.x)))
    if n_val >= len(data.x):
        raise ValueError(f"{data.name} has too few training samples to hold out a validation split")
    return Dataset(
        f"{data.name}[train-{n_val}]",
        data.x[:-n_val],
        data.y[:-n_val],
        data.x[-n_val:],
        data.y[-n_val:],
        data.n_classes,
    )
