"""Accuracy metrics over held-out ratings (never over the whole matrix)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from probmf.data.partitioned import PartitionedRatings
from probmf.data.ratings import Ratings


def rmse(pred: ArrayLike, truth: ArrayLike) -> float:
    """sqrt(mean (pred - truth)^2)."""
    err = jnp.asarray(pred, jnp.float32) - jnp.asarray(truth, jnp.float32)
    return float(jnp.sqrt(jnp.mean(err * err)))


def mae(pred: ArrayLike, truth: ArrayLike) -> float:
    """mean |pred - truth|."""
    return float(jnp.mean(jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(truth, jnp.float32))))


def predict_ratings(model: Any, test: Ratings, *, clip: tuple[float, float] | None = None) -> np.ndarray:
    """Predicted means for every pair of ``test`` (indices in the training id space).

    ``model`` is an `MFParams`, or any fitted model with ``predict(users, items) -> (n,)``
    that accepts the index -1. Cold users/items (-1) are predicted from what is known:
    biases and mu (`probmf.model.predict_with_fallback`). ``clip`` bounds predictions to the
    rating scale.
    """
    users, items = jnp.asarray(test.users), jnp.asarray(test.items)
    pred = model.predict(users, items)
    if clip is not None:
        pred = jnp.clip(pred, clip[0], clip[1])
    return np.asarray(pred)


def plugin_sd(model: Any, train: Ratings | PartitionedRatings, clip: tuple[float, float] | None) -> float:
    """A point estimate's plug-in predictive sd: sqrt(mean (r - clip(r_hat))^2) over ``train``.

    From a partitioned folder (`probmf.data.partitioned`) each process reads and predicts its
    own range of users and the squared errors are summed across processes (a collective
    under ``jax.distributed``: every process calls it), so no process holds all ratings."""
    if not isinstance(train, PartitionedRatings):
        return rmse(predict_ratings(model, train, clip=clip), train.values)
    from jax.experimental import multihost_utils

    from probmf.data.partitioned import load_rows
    from probmf.sharding import to_host

    model = to_host(model)  # the fit's tables may span the processes' devices
    n, processes, me = train.num_users, jax.process_count(), jax.process_index()
    per = -(-n // processes)
    rows = load_rows(train, "user", min(me * per, n), min((me + 1) * per, n))
    pred = np.asarray(model.predict(jnp.asarray(rows.rows), jnp.asarray(rows.cols)), np.float64)
    if clip is not None:
        pred = np.clip(pred, clip[0], clip[1])
    sse = np.array([np.sum((pred - rows.vals) ** 2)])
    if processes > 1:
        sse = np.asarray(multihost_utils.process_allgather(sse))
    return float(np.sqrt(np.sum(sse) / len(train)))


def interval_scores(mean: ArrayLike, sd: ArrayLike, truth: ArrayLike) -> dict:
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


def accuracy(pred: ArrayLike, test: Ratings, *, train: Ratings | None = None) -> dict:
    """RMSE, MAE, the test size and how many test pairs are cold (see `cold_mask`)."""
    if len(test) == 0:
        raise ValueError(f"{test.source or 'test ratings'}: no held-out ratings to evaluate")
    return {
        "rmse": rmse(pred, test.values),
        "mae": mae(pred, test.values),
        "n_test": len(test),
        "n_cold": int(np.sum(cold_mask(test, train))),
    }


def ranking(
    model: Any, train: Ratings, test: Ratings, *, k: int = 10, threshold: float = 4.0, chunk: int = 256
) -> dict:
    """Top-k quality on held-out ratings: precision@k, recall@k and NDCG@k (binary relevance).

    For every test user with at least one held-out rating >= ``threshold`` (the relevant
    items), all items are scored by the model's predicted mean, the items the user rated in
    ``train`` are left out, and the k best are compared with the relevant ones:

        precision = hits / k,   recall = hits / |relevant|,
        NDCG = sum_{hits at position p} 1 / log2(p + 1)  /  sum_{p <= min(k, |relevant|)} 1 / log2(p + 1),

    each averaged over those users. ``model`` as in `predict_ratings`; users are scored
    ``chunk`` at a time, so memory is chunk x num_items predictions.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    known = test.known
    relevant = known & (test.values >= threshold)
    users = np.unique(test.users[relevant])
    m = train.num_items
    rated = _csr_sets(train.users, train.items, train.num_users, m)
    rel = _csr_sets(test.users[relevant], test.items[relevant], train.num_users, m)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for start in range(0, users.size, chunk):
        block = users[start : start + chunk]
        u = jnp.asarray(np.repeat(block, m))
        i = jnp.asarray(np.tile(np.arange(m, dtype=np.int32), block.size))
        pred = model.predict(u, i)
        scores = np.array(pred, np.float64).reshape(block.size, m)
        for row, user in enumerate(block):
            scores[row, rated[user]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        for row, user in enumerate(block):
            hits = np.isin(top[row], rel[user])
            n_rel = rel[user].size
            precision.append(hits.sum() / k)
            recall.append(hits.sum() / n_rel)
            ndcg.append(float(discounts[hits].sum() / discounts[: min(k, n_rel)].sum()))
    if not users.size:
        raise ValueError(f"no test user has a held-out rating >= {threshold}")
    return {
        f"precision_at_{k}": float(np.mean(precision)),
        f"recall_at_{k}": float(np.mean(recall)),
        f"ndcg_at_{k}": float(np.mean(ndcg)),
        "n_ranked_users": int(users.size),
    }


def _csr_sets(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> list[np.ndarray]:
    """For each row, the sorted column indices it has (as a list of arrays)."""
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    bounds = np.searchsorted(rows, np.arange(num_rows + 1))
    return [cols[bounds[r] : bounds[r + 1]] for r in range(num_rows)]
