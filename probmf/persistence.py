"""Save and load fitted models safely: a folder with ``model.json`` and ``arrays.npz``.

The format (version 2), documented for anyone reading a saved model by hand:

    model.json   {"format": "probmf-model", "format_version": 2, "probmf_version", "model",
                  "options", "rating_range", "dataset" (the data it was fitted on, or null),
                  "structure", "arrays": {key: [dtype, shape]}, "sha256": hex digest of arrays.npz}
    arrays.npz   every array of the fitted model, plus "user_ids" and "item_ids" (raw ids) and
                 "rated_indptr", "rated_items" (CSR of the training items of each user)

``structure`` describes the fitted `probmf.predictor.Predictor` (a posterior result, or a
`PointPredictor` holding a point fit and its plug-in sd) as a tree of named tuples whose
leaves are arrays (by key into ``arrays.npz``) or JSON scalars. Version 1 files (a point fit
stored bare, its plug-in sd as "noise_sd" in model.json, when kept) still load. Only the
named-tuple types listed in `TYPES` are ever rebuilt, and arrays are read with
``allow_pickle=False``: loading a file runs no code from it. Loading checks the format
version, the checksum, and every array's dtype and shape, and raises `ModelFileError` naming the file and what is wrong.

Saving is atomic: the folder is written under a temporary name beside the target and renamed
into place; an existing model at the target is replaced only once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp

import probmf
from probmf.checkpoint import matrix_digest
from probmf.data.archive import sha256_file
from probmf.data.features import plain_options
from probmf.data.partitioned import PartitionedRatings
from probmf.data.ratings import IdMap, Ratings
from probmf.fitters import POSTERIOR_FITTERS, saved_types
from probmf.model import MFParams
from probmf.objectives import Priors
from probmf.posterior import Posterior, PredictiveSummary, RowPrior
from probmf.predictor import PointPredictor, Predictor

FORMAT = "probmf-model"
FORMAT_VERSION = 2
READS = (1, 2)  # the format versions `load_model` reads
# The only named tuples a model file may rebuild: the model's own and those of the
# registered fitters (`probmf.fitters.saved_types`).
_MODEL_TYPES = (MFParams, Priors, Posterior, PredictiveSummary, RowPrior, PointPredictor)
TYPES = {t.__name__: t for t in (*_MODEL_TYPES, *saved_types())}


class ModelFileError(ValueError):
    """A saved model that cannot be loaded: missing, corrupt, or of another format version."""


@dataclasses.dataclass(frozen=True)
class FittedModel:
    """A fitted model with what it needs to answer in raw ids.

    Attributes:
      model: the fitter's name ("als", "gibbs", ...); options: the options it ran with.
      fitted: its `probmf.predictor.Predictor` (``predictive(users, items)``, ...).
      user_ids, item_ids: the training id maps.
      rating_range: (low, high) of the training ratings, for clipping.
      rated_indptr, rated_items: CSR of the items each user rated in training (dense
        indices; user i's are ``rated_items[rated_indptr[i]:rated_indptr[i+1]]``), so
        recommendations can leave them out; None when not kept.
      dataset: what it was fitted on ("ml-100k", a file name, ...), None when unknown.
    """

    model: str
    options: dict
    fitted: Predictor
    user_ids: IdMap
    item_ids: IdMap
    rating_range: tuple[float, float]
    rated_indptr: np.ndarray | None = None
    rated_items: np.ndarray | None = None
    dataset: str | None = None

    def rated(self, user: int) -> np.ndarray:
        """Dense indices of the items dense user ``user`` rated in training."""
        if self.rated_indptr is None or self.rated_items is None:
            return np.zeros(0, np.int32)
        return self.rated_items[self.rated_indptr[user] : self.rated_indptr[user + 1]]

    @classmethod
    def from_training(
        cls, model: str, options: dict, fitted: Predictor, train: Ratings, dataset: str | None = None
    ) -> FittedModel:
        """Wrap a fit on the `Ratings` ``train``, keeping its id maps, rating range and rated items."""
        csr = train.to_coo().tocsr()
        low, high = float(train.values.min()), float(train.values.max())
        return cls(
            model,
            plain_options(options),
            fitted,
            train.user_ids,
            train.item_ids,
            (low, high),
            csr.indptr.astype(np.int64),
            csr.indices.astype(np.int32),
            dataset,
        )

    @classmethod
    def from_partitioned(
        cls, model: str, options: dict, fitted: Predictor, part: PartitionedRatings, dataset: str | None = None
    ) -> FittedModel:
        """Wrap a fit on the partitioned folder ``part``: its id maps and rating range from the
        metadata, the rated items (4 bytes a rating, in the process that saves) read one file of
        users at a time: the model `from_training` keeps for the same ratings."""
        from probmf.data.partitioned import load_rows

        indptr = np.concatenate([[0], np.cumsum(part.user_counts)]).astype(np.int64)
        items = np.empty(int(indptr[-1]), np.int32)
        block = part.blocks["user"]
        for lo in range(0, part.num_users, block):
            hi = min(lo + block, part.num_users)
            rows = load_rows(part, "user", lo, hi)
            # Each user's items in increasing order, as `from_training`'s CSR holds them.
            key = np.sort(rows.rows.astype(np.int64) * part.num_items + rows.cols)
            items[indptr[lo] : indptr[hi]] = key - rows.rows.astype(np.int64) * part.num_items
        return cls(model, plain_options(options), fitted, part.user_ids, part.item_ids, part.rating_range, indptr,
                   items, dataset)  # fmt: skip


def save_model(path: str | os.PathLike[str], model: FittedModel) -> Path:
    """Write ``model`` to the folder ``path`` atomically; returns the path."""
    path = Path(path)
    arrays: dict[str, Any] = {}
    structure = _encode(model.fitted, arrays, "fitted")
    arrays["user_ids"] = np.asarray(model.user_ids.raw)
    arrays["item_ids"] = np.asarray(model.item_ids.raw)
    if model.rated_indptr is not None:
        arrays["rated_indptr"] = np.asarray(model.rated_indptr)
        arrays["rated_items"] = np.asarray(model.rated_items)
    for key, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"array {key!r} has dtype object, which cannot be saved without pickle")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        np.savez(work / "arrays.npz", **arrays)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "probmf_version": probmf.__version__,
            "model": model.model,
            "options": model.options,
            "rating_range": list(model.rating_range),
            "dataset": model.dataset,
            "structure": structure,
            "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()},
            "sha256": sha256_file(work / "arrays.npz"),
        }
        (work / "model.json").write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
        _replace_dir(work, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def load_model(path: str | os.PathLike[str]) -> FittedModel:
    """Read a model written by `save_model`, checking format, checksum, dtypes and shapes."""
    path = Path(path)
    meta_file, array_file = path / "model.json", path / "arrays.npz"
    if not meta_file.is_file() or not array_file.is_file():
        raise ModelFileError(f"{path}: not a saved probmf model (needs model.json and arrays.npz)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{meta_file}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{meta_file}: not a probmf model file")
    version = meta.get("format_version")
    if version not in READS:
        raise ModelFileError(
            f"{meta_file}: format version {version!r}; this probmf ({probmf.__version__}) reads versions {READS}"
        )
    if sha256_file(array_file) != meta.get("sha256"):
        raise ModelFileError(f"{array_file}: checksum mismatch, the file is corrupt or was changed")
    try:
        with np.load(array_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{array_file}: cannot be read ({err})") from None
    expected = meta.get("arrays", {})
    if set(arrays) != set(expected):
        raise ModelFileError(f"{array_file}: holds arrays {sorted(arrays)}, expected {sorted(expected)}")
    for key, (dtype, shape) in expected.items():
        if arrays[key].dtype.str != dtype or list(arrays[key].shape) != shape:
            raise ModelFileError(
                f"{array_file}: array {key!r} is {arrays[key].dtype.str} {list(arrays[key].shape)}, "
                f"expected {dtype} {shape}"
            )
    try:
        fitted = _decode(meta["structure"], arrays)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{meta_file}: bad structure ({err})") from None
    if version == 1 and meta["model"] not in POSTERIOR_FITTERS:  # a bare point fit
        noise_sd = meta.get("noise_sd")
        fitted = PointPredictor(fitted, float("nan") if noise_sd is None else noise_sd)
    low, high = meta["rating_range"]
    return FittedModel(
        meta["model"],
        meta["options"],
        fitted,
        IdMap(arrays["user_ids"]),
        IdMap(arrays["item_ids"]),
        (low, high),
        arrays.get("rated_indptr"),
        arrays.get("rated_items"),
        meta.get("dataset"),
    )


# ---- the structure tree ---------------------------------------------------------------------


def _encode(obj: Any, arrays: dict, key: str) -> dict[str, Any]:
    if isinstance(obj, tuple) and "_fields" in type(obj).__dict__:  # a named tuple
        name = type(obj).__name__
        if TYPES.get(name) is not type(obj):
            raise TypeError(f"cannot save a {name}: not one of probmf.persistence.TYPES")
        return {
            "type": name,
            "fields": {f: _encode(getattr(obj, f), arrays, f"{key}.{f}") for f in type(obj).__dict__["_fields"]},
        }
    if isinstance(obj, jax.Array | np.ndarray):
        arrays[key] = np.asarray(obj)
        return {"array": key}
    if isinstance(obj, np.generic):
        return {"value": obj.item()}
    if obj is None or isinstance(obj, bool | int | float | str):
        return {"value": obj}
    if isinstance(obj, list | tuple):
        return {"list": [_encode(v, arrays, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"dict": {k: _encode(v, arrays, f"{key}.{k}") for k, v in obj.items()}}
    raise TypeError(f"cannot save {key}: unsupported type {type(obj).__name__}")


def _decode(node: dict[str, Any], arrays: dict) -> Any:
    if "type" in node:
        cls = TYPES[node["type"]]  # KeyError for any type not allow-listed
        return cls(**{f: _decode(v, arrays) for f, v in node["fields"].items()})
    if "array" in node:
        return arrays[node["array"]]
    if "list" in node:
        return tuple(_decode(v, arrays) for v in node["list"])
    if "dict" in node:
        return {k: _decode(v, arrays) for k, v in node["dict"].items()}
    return node["value"]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if sp.issparse(obj):  # e.g. the Gibbs sampler's attribute matrices: recorded by digest
        return {"sparse_matrix": matrix_digest(obj)}
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    raise TypeError(f"option of type {type(obj).__name__} is not JSON serialisable")


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``; an old ``target`` is removed only after."""
    if target.exists() and not (target / "model.json").is_file():
        raise FileExistsError(f"{target} exists and is not a saved probmf model; not overwriting it")
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)  # put the previous model back
        raise
    shutil.rmtree(old, ignore_errors=True)
