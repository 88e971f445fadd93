"""The estimator: fit, predict, recommend and fold in on raw ids and pandas DataFrames.

    >>> import probmf
    >>> m = probmf.Recommender("als", rank=10, seed=0).fit(train_df)   # doctest: +SKIP
    >>> m.predict(test_df)            # user, item, mean, sd, known       # doctest: +SKIP
    >>> m.recommend([196, 1], n=10)   # user, rank, item, score, mean, sd (+ title)  # doctest: +SKIP

Every id in and out is a raw id (what the DataFrame holds); the dense indices of
`probmf.data.ratings.Ratings` never leave this module. A DataFrame is checked as a ratings
file is (`probmf.data.io.read_dataframe`) before anything is fitted. An unknown user or item
gets the model's fallback (biases and mu for a point estimate, the prior for a posterior)
and ``known=False``, never an error. A point estimate's sd is its plug-in sd (the RMS
training residual), a posterior's its predictive sd.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from probmf.checkpoint import show_progress
from probmf.data.features import FeatureTable, row_of
from probmf.data.io import dataframe_columns, to_ratings
from probmf.data.ratings import UNKNOWN, Ratings
from probmf.data.splits import kfold
from probmf.evaluate import evaluate_fold
from probmf.fitters.run import fit_model, resolve_options
from probmf.persistence import FittedModel, load_model, save_model
from probmf.recommend import Recommendation, fold_in, predict_pairs, recommend, score_user, title_of, titles_for

__all__ = ["Recommender", "cross_validate"]


class Recommender:
    """One fitter (``probmf.FITTERS``) behind a scikit-learn-like interface on raw ids.

    Args:
      model: a fitter's name ("als", "gibbs", "svi", ...).
      seed: seeds the fit (and Thompson draws in `recommend`).
      columns: user, item, rating[, timestamp] column names of the DataFrames given to `fit`
        (and user, item to `predict`); None finds them by name.
      rating_scale: (low, high); a training rating outside it is an error.
      progress: a progress bar over the fit's sweeps or epochs (None: in interactive sessions).
      **options: the fitter's options (``rank``, ``lam``, ``num_samples``, ...), checked here.

    After `fit`: ``model_`` is the `probmf.persistence.FittedModel` (what `save` writes).
    """

    def __init__(
        self,
        model: str = "als",
        *,
        seed: int = 0,
        columns: Sequence[str] | None = None,
        rating_scale: tuple[float, float] | None = None,
        progress: bool | None = None,
        **options: Any,
    ) -> None:
        resolve_options(model, options)  # an unknown model or option fails here, not at fit
        self.model, self.seed, self.columns, self.rating_scale = model, int(seed), columns, rating_scale
        self.progress = progress
        self.options = options
        self.model_: FittedModel | None = None

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Recommender({self.model!r}, seed={self.seed}{opts})"

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data: pd.DataFrame | Ratings) -> Recommender:
        """Fit on a DataFrame (one rating per row, raw ids) or `Ratings`; returns self."""
        train = to_ratings(data, columns=self.columns, rating_scale=self.rating_scale)
        with show_progress(self.progress):
            fitted, options, _ = fit_model(self.model, train, options=self.options, seed=self.seed)
        self.model_ = FittedModel.from_training(self.model, options, fitted, train, train.source or None)
        return self

    def _fitted(self) -> FittedModel:
        if self.model_ is None:
            raise RuntimeError(f"{self!r} is not fitted yet: call fit(ratings) first")
        return self.model_

    # ---- answers in raw ids -----------------------------------------------------------------
    def predict(
        self,
        data: pd.DataFrame | npt.ArrayLike,
        items: npt.ArrayLike | None = None,
        *,
        times: npt.ArrayLike | None = None,
        clip: bool = True,
    ) -> pd.DataFrame:
        """Predictions for (user, item) pairs: a DataFrame with user and item columns (and a
        timestamp column, when it has one), or two arrays of raw ids. Returns a DataFrame user,
        item, mean, sd, known (False: the user or item had no training rating; it got the
        fallback). ``times``: the pairs' timestamps (seconds), for a posterior with time effects;
        None: the DataFrame's timestamp column, else "now". ``clip``: means bounded to the
        training rating range."""
        model = self._fitted()
        if items is None:
            roles = dataframe_columns(data, _pair_columns(self.columns), need=("user", "item"))
            users, items = data[roles["user"]].to_numpy(), data[roles["item"]].to_numpy()  # type: ignore[index,union-attr]  # a DataFrame
            if times is None and "timestamp" in roles:
                times = data[roles["timestamp"]].to_numpy(np.float64)  # type: ignore[index,union-attr]
        else:
            users, items = np.asarray(data), np.asarray(items)
            if users.shape != items.shape or users.ndim != 1:
                raise ValueError(f"users and items must be 1-d arrays of one length, got {users.shape}, {items.shape}")
        pred = predict_pairs(model, users, items, times=times, clip=clip)
        return pd.DataFrame({"user": users, "item": items, "mean": pred.mean, "sd": pred.sd, "known": pred.known})

    def recommend(
        self,
        users: Any,
        n: int = 10,
        *,
        exclude_rated: bool = True,
        strategy: str = "mean",
        titles: str | os.PathLike[str] | None = None,
    ) -> pd.DataFrame:
        """Top-``n`` items for each raw user id in ``users`` (one id or a list), best first.

        Returns a DataFrame user, rank (1 = best), item, score, mean, sd (+ title when
        ``titles``, a titles file, or the model's MovieLens dataset names them). An unknown
        user gets the fallback ranking (every user's: biases and mu, or the prior), or, when
        the ``user_features`` table given at fit has their row, a posterior's prediction from
        their attributes (`fold_in` with no ratings); its rows are ``known=False``.
        ``exclude_rated``: leave out the user's training items.
        ``strategy``: "mean", "ucb" or "thompson" (posteriors; `probmf.recommend.recommend`).
        """
        model = self._fitted()
        users = np.atleast_1d(np.asarray(users))
        dense = model.user_ids.index(users)
        names = titles_for(titles, model.dataset)
        key = jax.random.PRNGKey(self.seed)
        frames = []
        for raw, u in zip(users, dense, strict=True):
            key, sub = jax.random.split(key)
            rng_key = sub if strategy == "thompson" else None
            row = self._attributes_of(raw) if u == UNKNOWN else None
            if row is not None:  # a new user with known attributes: a cold start from them
                scores, exclude = fold_in(model, [], [], attributes=row, rng_key=rng_key)
            else:
                scores = score_user(model, int(u), rng_key)
                exclude = model.rated(int(u)) if exclude_rated and u != UNKNOWN else ()
            rec = recommend(model, scores, n=n, exclude=exclude, strategy=strategy)
            frames.append(_recommendations(raw, rec, u != UNKNOWN, names))
        return pd.concat(frames, ignore_index=True)

    def fold_in(
        self,
        data: pd.DataFrame | dict[Any, float] | None = None,
        *,
        n: int = 10,
        user: Any = "new",
        strategy: str = "mean",
        attributes: Any = None,
    ) -> pd.DataFrame:
        """Top-``n`` items for a NEW user given their ratings (a DataFrame with item and
        rating columns, or a dict item -> rating; None or empty: none) and, for a posterior
        fitted with user attributes, their attributes, without refitting
        (`probmf.recommend.fold_in`). ``attributes``: the user's row in the columns of the
        training `FeatureTable` (`probmf.data.row_of`); None: the row of ``user`` in the table
        given as ``user_features`` at fit, when it has one. Returns the DataFrame of `recommend`
        with user ``user``; the rated items are left out."""
        model = self._fitted()
        if data is None:
            data = {}
        if isinstance(data, dict):
            raw_items, values = np.asarray(list(data)), np.asarray(list(data.values()), np.float64)
        else:
            roles = dataframe_columns(data, None, need=("item", "rating"))
            raw_items, values = data[roles["item"]].to_numpy(), data[roles["rating"]].to_numpy(np.float64)
        if attributes is None:
            attributes = self._attributes_of(user)
        if not np.all(np.isfinite(values)) or (len(values) == 0 and attributes is None):
            raise ValueError(f"fold-in needs finite ratings or the user's attributes, got {values.tolist()[:5]}")
        key = jax.random.PRNGKey(self.seed)
        rng_key = key if strategy == "thompson" else None
        scores, rated = fold_in(model, raw_items, values, attributes=attributes, rng_key=rng_key)
        rec = recommend(model, scores, n=n, exclude=rated, strategy=strategy)
        return _recommendations(user, rec, True, titles_for(None, model.dataset))

    def _attributes_of(self, user: Any) -> sp.csr_matrix | None:
        """The (1, G) row of raw user id ``user`` in the fit's user `FeatureTable`, or None."""
        table = self.options.get("user_features")
        return row_of(table, user) if isinstance(table, FeatureTable) else None

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to the folder ``path`` (`probmf.persistence.save_model`:
        atomic, no pickle); returns the path."""
        return save_model(path, self._fitted())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recommender:
        """A fitted `Recommender` from a folder written by `save` (or ``probmf fit --out``)."""
        model = load_model(path)
        est = cls(model.model)
        est.options, est.model_ = dict(model.options), model
        return est


def _pair_columns(columns: Sequence[str] | None) -> list[str] | None:
    return None if columns is None else list(columns)[:2]


def _recommendations(user: Any, rec: Recommendation, known: bool, titles: dict | None) -> pd.DataFrame:
    """One user's `probmf.recommend.Recommendation` as rows."""
    n = len(rec.items)
    frame = pd.DataFrame({
        "user": np.repeat(np.asarray([user]), n),
        "rank": np.arange(1, n + 1),
        "item": rec.items,
        "score": rec.score,
        "mean": rec.mean,
        "sd": rec.sd,
        "known": np.full(n, known),
    })  # fmt: skip
    if titles:
        frame["title"] = [title_of(titles, item) for item in rec.items]
    return frame


def cross_validate(
    model: str,
    data: pd.DataFrame | Ratings,
    *,
    folds: int = 5,
    seed: int = 0,
    columns: Sequence[str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """``folds``-fold cross-validation of ``model`` on ``data`` (a DataFrame or `Ratings`):
    one row per fold with the fields of ``probmf evaluate --json`` (rmse, mae, coverage_50,
    coverage_90, nll, the cold-pair scores, fit_seconds, ...). The folds partition the ratings
    at random (``seed``); each fold's model sees its training part alone."""
    ratings = to_ratings(data, columns=columns)
    resolve_options(model, options)
    rows = []
    for k, (train, test) in enumerate(kfold(ratings, folds, seed=seed), start=1):
        row = evaluate_fold(model, train, test, options=options, seed=seed)
        rows.append({"fold": k, **row})
    return pd.DataFrame(rows)
