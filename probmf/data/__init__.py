"""Ratings data: the container, file and MovieLens loaders, splits and synthetic data."""

from probmf.data.io import RatingsFileError, read_ratings, write_ratings
from probmf.data.movielens import (
    DATASETS,
    DatasetNotFoundError,
    UnsafeArchiveError,
    load_movielens,
    load_split,
    load_split_or_synthetic,
    load_titles,
)
from probmf.data.ratings import UNKNOWN, IdMap, Ratings
from probmf.data.splits import (
    kfold,
    per_user_split,
    per_user_temporal_split,
    random_split,
    temporal_split,
)
from probmf.data.synthetic import PRESETS, SyntheticTruth, synthetic_preset, synthetic_ratings

__all__ = [
    "DATASETS",
    "UNKNOWN",
    "DatasetNotFoundError",
    "PRESETS",
    "IdMap",
    "Ratings",
    "RatingsFileError",
    "SyntheticTruth",
    "UnsafeArchiveError",
    "kfold",
    "load_movielens",
    "load_split",
    "load_split_or_synthetic",
    "load_titles",
    "per_user_split",
    "per_user_temporal_split",
    "random_split",
    "read_ratings",
    "synthetic_preset",
    "synthetic_ratings",
    "temporal_split",
    "write_ratings",
]
