"""Fit a model on training ratings and score it on held-out ratings: one row per fold.

The row schema is the project's measurement interface (`probmf evaluate --json`):
dataset, split, model, rank, rmse, mae, n_train, n_test, n_cold, coverage_50, coverage_90,
nll, rmse_cold, coverage_50_cold, coverage_90_cold (over the cold pairs; null without any),
num_samples, r_hat_max, ess_min (posteriors), fit_seconds, predict_seconds,
probmf_version, seed, options.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

import probmf
from probmf.data.features import plain_options
from probmf.data.io import read_ratings
from probmf.data.movielens import DATASETS, DatasetNotFoundError, load_movielens, load_split
from probmf.data.ratings import Ratings
from probmf.data.splits import kfold, random_split
from probmf.data.synthetic import PRESETS, synthetic_preset
from probmf.diagnostics import bulk_ess, prediction_draws, rank_rhat, tail_ess
from probmf.fitters.run import fit_model
from probmf.metrics import accuracy, cold_mask, interval_scores, ranking, rmse
from probmf.predictor import Predictor

OFFICIAL_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
FOLDS = ("u1", "u2", "u3", "u4", "u5")  # --split all; on data without official splits: 5-fold CV
FALLBACK_PRESET = {"ml-100k": "ml100k", "ml-1m": "ml1m", "ml-20m": "ml20m"}


def score(
    fitted: Predictor,
    train: Ratings,
    test: Ratings,
    *,
    clip: bool | tuple[float, float] = True,
    ranking_k: int | None = None,
) -> dict:
    """Accuracy and calibration of a `probmf.predictor.Predictor` on ``test`` (ids in
    train's id space); a point fit's plug-in sd is the one it was wrapped with
    (`probmf.fitters.run.predictor_of`, given the same ``clip``).

    ``clip``: True bounds predictions to the training rating range, False leaves them, or a
    (low, high) pair. One rule for every score: the clipped mean is what RMSE and MAE score
    and where the predictive N(mean, sd^2) of coverage and NLL is centred. Cold pairs (a
    user or item with no training rating: `probmf.metrics.cold_mask`) are counted in
    ``n_cold`` and scored apart in ``rmse_cold``, ``coverage_50_cold``, ``coverage_90_cold``
    (None when there are none); posteriors predict them under each draw's prior, point
    estimates from biases and mu. ``ranking_k`` adds top-k metrics (`probmf.metrics.ranking`).
    A posterior with time effects (``fitted.posterior.time``, the Gibbs sampler's ``time=True``)
    is given the test ratings' timestamps when they have them.
    """
    if clip is True:
        clip = (float(train.values.min()), float(train.values.max()))
    t0 = time.perf_counter()
    # One pass over the test pairs (and, for a posterior, over its draws) serves both
    # accuracy and calibration.
    # A posterior with time effects predicts at the pairs' times (a summary-only run already
    # holds its pairs' fit-time times).
    timed = fitted.posterior is not None and fitted.posterior.time is not None and test.timestamps is not None
    times = {"times": test.timestamps} if timed else {}
    mean, sd = (np.asarray(a) for a in fitted.predictive(jnp.asarray(test.users), jnp.asarray(test.items), **times))
    predict_seconds = time.perf_counter() - t0
    pred = np.clip(mean, *clip) if clip else mean
    uncertainty = _uncertainty(fitted, test, pred, sd)
    cold = cold_mask(test, train)
    return {
        "rank": int(fitted.rank),
        **accuracy(pred, test, train=train),
        **uncertainty.pop("scores"),
        **_cold_scores(pred, uncertainty.pop("sd"), test.values, cold),
        **uncertainty,
        "n_train": len(train),
        "predict_seconds": round(predict_seconds, 4),
        **(ranking(fitted, train, test, k=ranking_k) if ranking_k else {}),
    }


def _cold_scores(pred: np.ndarray, sd: np.ndarray, truth: np.ndarray, cold: np.ndarray) -> dict:
    """RMSE and interval coverage over the cold pairs alone (None when there are none)."""
    if not cold.any():
        return {"rmse_cold": None, "coverage_50_cold": None, "coverage_90_cold": None}
    scores = interval_scores(pred[cold], sd[cold], truth[cold])
    return {
        "rmse_cold": rmse(pred[cold], truth[cold]),
        "coverage_50_cold": scores["coverage_50"],
        "coverage_90_cold": scores["coverage_90"],
    }


def evaluate_fold(
    model: str,
    train: Ratings,
    test: Ratings,
    *,
    options: dict,
    seed: int = 0,
    clip: bool | tuple[float, float] = True,
    ranking_k: int | None = None,
) -> dict:
    """Fit ``model`` on ``train`` and score it on ``test``: one row of `probmf evaluate`.

    With ``keep_draws=False`` (Gibbs) the sampler is given the test pairs and keeps only the
    running moments of their predictive, never a draw (ML-20M-size posteriors), and with
    time effects their timestamps."""
    if options.get("keep_draws") is False and ranking_k:
        raise ValueError(
            "keep_draws=False cannot be combined with ranking_k: ranking scores every item for each test user, "
            "and a summary-only fit keeps the predictive moments of the test pairs alone"
        )
    if options.get("keep_draws") is False:
        options = {**options, "predict_pairs": (test.users, test.items)}
        if options.get("time") and test.timestamps is not None:
            options["predict_times"] = test.timestamps
    fitted, options, seconds = fit_model(model, train, options=options, seed=seed, clip=clip)
    options.pop("predict_pairs", None)
    options.pop("predict_times", None)
    return {
        "model": model,
        **score(fitted, train, test, clip=clip, ranking_k=ranking_k),
        "fit_seconds": round(seconds, 4),
        "probmf_version": probmf.__version__,
        "seed": seed,
        "options": {k: v for k, v in plain_options(options).items() if k != "rank"},
    }


def _uncertainty(fitted: Predictor, test: Ratings, mean: np.ndarray, sd: np.ndarray) -> dict:
    """Interval coverage and NLL on the test ratings of N(mean, sd^2) ("scores"), the sd
    ("sd": the posterior predictive's, or a point fit's plug-in sd) and the draws'
    diagnostics (none for a point fit; None for a posterior kept as running moments only)."""
    extra: dict[str, Any] = {"num_samples": int(fitted.num_samples)}
    if fitted.posterior is not None:
        extra.update(_convergence(fitted, test))
    elif fitted.num_samples > 1:
        extra.update(r_hat_max=None, ess_min=None, ess_tail_min=None)
    return {"scores": interval_scores(mean, sd, test.values), "sd": sd, **extra}


def _convergence(fitted: Predictor, test: Ratings, num_pairs: int = 200) -> dict:
    """Rank-normalised split R-hat (max), bulk ESS (min) and tail ESS (min) of the predictions at up to
    ``num_pairs`` test pairs spread over the test set (`probmf.diagnostics`; chains as the
    sampler ran them, between chains with several; one chain is split in two)."""
    chains, posterior = fitted.num_chains, fitted.posterior
    assert posterior is not None, "called for a fit that keeps its draws"
    if posterior.num_samples // chains < 4:  # split R-hat needs two halves of >= 2 draws
        return {"r_hat_max": None, "ess_min": None, "ess_tail_min": None}
    pick = np.unique(np.linspace(0, len(test) - 1, min(num_pairs, len(test))).astype(np.int64))
    times = None if test.timestamps is None else test.timestamps[pick]
    x = prediction_draws(posterior, test.users[pick], test.items[pick], num_chains=chains, times=times)
    r_hat, bulk, tail = rank_rhat(x), bulk_ess(x), tail_ess(x)

    def worst(values: np.ndarray, extreme: Callable) -> float | None:
        # A pair predicted identically by every draw (e.g. a cold one) has no defined R-hat or
        # ESS (NaN; its ESS reads S): it is left out.
        ok = np.isfinite(r_hat) & np.isfinite(values)
        return float(extreme(values[ok])) if ok.any() else None

    return {"r_hat_max": worst(r_hat, np.max), "ess_min": worst(bulk, np.min), "ess_tail_min": worst(tail, np.min)}


def mean_row(rows: list[dict]) -> dict:
    """The per-fold rows summarised as one row with split "mean" and "folds" naming them.

    Per-fold metrics (rmse, mae, coverage, nll, counts, seconds, ranking and ``*_cold``
    fields) are averaged over the folds where they are not None (None where no fold has
    one); r_hat_max is the max and ess_min, ess_tail_min the min over the folds (ignoring None). Every
    other field (dataset, model, rank, num_samples, options, ...) is kept only when all folds
    agree on it, else it is None: nothing fold-specific is copied from one fold.
    """
    numeric = ("rmse", "mae", "coverage_50", "coverage_90", "nll", "n_train", "n_test", "n_cold", "fit_seconds",
               "predict_seconds", "n_ranked_users")  # fmt: skip
    extreme = {"r_hat_max": max, "ess_min": min, "ess_tail_min": min}

    def same(values: list) -> bool:
        try:
            return all(bool(v == values[0]) for v in values[1:])
        except (TypeError, ValueError):  # e.g. arrays: not one value
            return False

    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r.get(key) for r in rows]
        given = [v for v in values if v is not None]
        if key in numeric or key.endswith("_cold") or key.startswith(("precision_at_", "recall_at_", "ndcg_at_")):
            out[key] = float(np.mean(given)) if given else None
        elif key in extreme:
            out[key] = float(extreme[key](given)) if given else None
        else:
            out[key] = values[0] if same(values) else None
    out["split"] = "mean"
    out["folds"] = [r.get("split") for r in rows]
    return out


def folds(
    data: str | None,
    split: str,
    *,
    train_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    fallback: bool = True,
    notify: Callable[[str], object] | None = None,
) -> Iterator[tuple[str, str, Ratings, Ratings]]:
    """Yield (dataset, split, train, test) for ``probmf evaluate``.

    data: a MovieLens name ("ml-100k", ...), "synthetic" or "synthetic:<preset>"; ignored
      when ``train_file``/``test_file`` are given.
    split: u1..u5, ua, ub (ML-100K's official splits; on other data u1..u5 are the folds
      of a seeded 5-fold split), "all" (u1..u5), or "holdout" (seeded random 80/20).
    fallback: when MovieLens is absent and cannot be downloaded, use the synthetic preset
      of the same shape and say so through ``notify``.
    """
    notify = notify or (lambda msg: print(msg, file=sys.stderr))
    if train_file or test_file:
        if not (train_file and test_file):
            raise ValueError("--train and --test go together")
        train = read_ratings(train_file)
        test = read_ratings(test_file).reindex(train.user_ids, train.item_ids)
        yield "files", str(test_file), train, test
        return
    names = FOLDS if split == "all" else (split,)
    for name in names:
        if name not in OFFICIAL_SPLITS + ("holdout",):
            raise ValueError(f"unknown split {name!r}; choose u1..u5, ua, ub, all or holdout")
    if data == "ml-100k" and split != "holdout":
        try:
            for name in names:
                train, test = load_split("ml-100k", name)
                yield data, name, train, test
            return
        except DatasetNotFoundError as err:
            if not fallback:
                raise
            ratings, data = _fallback(data, err, notify)
    elif data is None:
        raise ValueError("give a dataset name, or train_file and test_file")
    else:
        ratings, data = load_ratings(data, fallback=fallback, notify=notify)
    yield from _cv_folds(data, ratings, names, seed)


def load_ratings(
    data: str, *, fallback: bool = True, notify: Callable[[str], object] | None = None
) -> tuple[Ratings, str]:
    """All ratings of a dataset and its name: a MovieLens name, or "synthetic[:preset]"
    (default preset ml100k). With ``fallback``, a MovieLens set that is absent and cannot
    be downloaded is replaced by the synthetic preset of its shape, with a notice."""
    notify = notify or (lambda msg: print(msg, file=sys.stderr))
    if data in DATASETS:
        try:
            return load_movielens(data), data
        except DatasetNotFoundError as err:
            if not fallback or data not in FALLBACK_PRESET:
                raise
            return _fallback(data, err, notify)
    if data and (data == "synthetic" or data.startswith("synthetic:")):
        preset = data.partition(":")[2] or "ml100k"
        if preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
        return synthetic_preset(preset, seed=0)[0], f"synthetic:{preset}"
    raise ValueError(f"unknown dataset {data!r}; choose one of {sorted(DATASETS)} or synthetic[:preset]")


def _fallback(name: str, err: Exception, notify: Callable[[str], object]) -> tuple[Ratings, str]:
    preset = FALLBACK_PRESET[name]
    details = "".join(f"probmf:   {line}\n" for line in str(err).splitlines())
    notify(
        f"probmf: NOTICE: MovieLens {name} is not available, so this runs on SYNTHETIC data shaped like it "
        f"(preset {preset!r}); these figures are not MovieLens figures.\n{details}".rstrip()
    )
    ratings, _ = synthetic_preset(preset, seed=0)
    return ratings, f"synthetic:{preset}"


def _cv_folds(
    dataset: str, ratings: Ratings, names: Iterable[str], seed: int
) -> Iterator[tuple[str, str, Ratings, Ratings]]:
    if names == ("holdout",):
        train, test = random_split(ratings, 0.2, seed=seed)
        yield dataset, "holdout", train, test
        return
    split_list = kfold(ratings, 5, seed=seed)
    for name in names:
        if name not in FOLDS:
            raise ValueError(f"split {name!r} exists only for ml-100k; use u1..u5, all or holdout")
        train, test = split_list[FOLDS.index(name)]
        yield dataset, name, train, test
