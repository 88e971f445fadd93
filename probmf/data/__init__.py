"""Ratings data: the container, file and MovieLens loaders, splits, synthetic data, side
information (user / item attributes as design matrices), and partitioned folders (ratings
split by row blocks, read a range of rows at a time)."""

from probmf.data.features import (
    FeatureTable,
    MissingFeaturesWarning,
    align,
    design_matrix,
    from_columns,
    read_features,
    row_of,
)
from probmf.data.io import RatingsFileError, read_ratings, write_ratings
from probmf.data.movielens import (
    DATASETS,
    DatasetNotFoundError,
    UnsafeArchiveError,
    load_features,
    load_movielens,
    load_split,
    load_split_or_synthetic,
    load_titles,
)
from probmf.data.partitioned import PartitionedRatings, load_rows, open_partitioned, partition
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
    "FeatureTable",
    "PRESETS",
    "IdMap",
    "MissingFeaturesWarning",
    "PartitionedRatings",
    "Ratings",
    "RatingsFileError",
    "SyntheticTruth",
    "UnsafeArchiveError",
    "align",
    "design_matrix",
    "from_columns",
    "kfold",
    "load_features",
    "load_movielens",
    "load_rows",
    "load_split",
    "load_split_or_synthetic",
    "load_titles",
    "open_partitioned",
    "partition",
    "per_user_split",
    "per_user_temporal_split",
    "random_split",
    "read_features",
    "read_ratings",
    "row_of",
    "synthetic_preset",
    "synthetic_ratings",
    "temporal_split",
    "write_ratings",
]
