"""Accuracy metrics over held-out ratings (never over the whole matrix)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from probmf.data.ratings import Ratings
from probmf.model import predict_with_fallback


def rmse(pred, truth) -> float:
    """sqrt(mean (pred - truth)^2)."""
    err = jnp.asarray(pred, jnp.float32) - jnp.asarray(truth, jnp.float32)
    return float(jnp.sqrt(jnp.mean(err * err)))


def mae(pred, truth) -> float:
    """mean |pred - truth|."""
    return float(jnp.mean(jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(truth, jnp.float32))))


def predict_ratings(model, test: Ratings, *, clip: tuple[float, float] | None = None) -> np.ndarray:
    """Predicted means for every pair of ``test`` (indices in the training id space).

    ``model`` is an `MFParams`, or any fitted model with ``predict(users, items) -> (n,)``
    that accepts the index -1. Cold users/items (-1) are predicted from what is known:
    biases and mu (`probmf.model.predict_with_fallback`). ``clip`` bounds predictions to the
    rating scale.
    """
    users, items = jnp.asarray(test.users), jnp.asarray(test.items)
    pred = model.predict(users, items) if hasattr(model, "predict") else predict_with_fallback(model, users, items)
    if clip is not None:
        pred = jnp.clip(pred, clip[0], clip[1])
    return np.asarray(pred)


def interval_scores(mean, sd, truth) -> dict:
    """Calibration of Gaussian predictive distributions N(mean, sd^2) on held-out ratings:
    coverage of the central 50% and 90% intervals and the mean negative log density (nats)."""
    mean, sd, truth = (np.asarray(a, np.float64) for a in (mean, sd, truth))
    z = np.abs(truth - mean) / sd
    nll = 0.5 * z**2 + np.log(sd) + 0.5 * np.log(2 * np.pi)
    return {
        "coverage_50": float(np.mean(z <= 0.6744897501960817)),
        "coverage_90": float(np.mean(z <= 1.6448536269514722)),
        "nll": float(np.mean(nll)),
    }


def cold_mask(test: Ratings, train: Ratings | None = None) -> np.ndarray:
    """bool (n,): the pair's user or item is unknown (-1) or, given ``train``, has no
    training rating (its factors were never fitted)."""
    cold = ~test.known
    if train is not None:
        seen_u = np.bincount(train.users, minlength=train.num_users) > 0
        seen_i = np.bincount(train.items, minlength=train.num_items) > 0
        cold |= ~seen_u[np.maximum(test.users, 0)] | ~seen_i[np.maximum(test.items, 0)]
    return cold


def accuracy(pred, test: Ratings, *, train: Ratings | None = None) -> dict:
    """RMSE, MAE, the test size and how many test pairs are cold (see `cold_mask`)."""
    if len(test) == 0:
        raise ValueError(f"{test.source or 'test ratings'}: no held-out ratings to evaluate")
    return {
        "rmse": rmse(pred, test.values),
        "mae": mae(pred, test.values),
        "n_test": len(test),
        "n_cold": int(np.sum(cold_mask(test, train))),
    }
