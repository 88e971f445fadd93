"""The clipping rule: every prediction that is scored or used to make a choice is clipped to the
training rating range first, including the validation RMSE that early-stops a fitter."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters import autorec as autorec_mod
from probmf.fitters import mlp as mlp_mod
from probmf.fitters import optax_mf as optax_mod
from probmf.fitters import residual as residual_mod
from probmf.fitters.minibatch import clipped_rmse, rating_range, train_minibatch

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def train():
    ratings, _ = synthetic_ratings(num_users=60, num_items=40, num_ratings=1200, rank=2, noise=0.5, seed=3)
    return random_split(ratings, 0.2, seed=0)[0]


def _rmse(pred, truth) -> float:
    err = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return float(np.sqrt(np.mean(err * err)))


def test_clipped_rmse_clips_the_predictions_not_the_targets():
    pred, truth = np.array([0.0, 7.0, 3.0]), np.array([1.0, 5.0, 2.0])
    np.testing.assert_allclose(clipped_rmse(pred, truth, (1.0, 5.0)), _rmse([1.0, 5.0, 3.0], truth), rtol=1e-6)
    np.testing.assert_allclose(clipped_rmse(pred, truth, None), _rmse(pred, truth), rtol=1e-6)
    assert rating_range(np.array([2.0, 0.5, 4.5], np.float32)) == (0.5, 4.5)


def test_early_stopping_rmse_is_that_of_the_clipped_predictions():
    """The trainer's validation RMSE (what early stopping compares) of predictions outside
    the range equals the clipped RMSE, not the raw one."""
    pred = jnp.array([-2.0, 0.5, 3.0, 6.5, 9.0], jnp.float32)  # the predictions themselves
    truth = jnp.array([1.0, 1.0, 3.0, 5.0, 4.0], jnp.float32)
    params = {"a": jnp.zeros(())}

    def loss_fn(p, batch, weights):
        return jnp.sum(weights * (p["a"] - batch[0]) ** 2) / jnp.sum(weights)

    res = train_minibatch(
        KEY, loss_fn, params, (truth,), optimizer=optax.sgd(0.0), batch_size=5, num_epochs=2,
        val_arrays=(pred, truth), predict_fn=lambda p, x: x + p["a"], patience=1, rating_range=(1.0, 5.0),
    )  # fmt: skip
    want = _rmse(np.clip(pred, 1.0, 5.0), truth)
    assert want < _rmse(pred, truth) - 1.0
    np.testing.assert_allclose(res.trace.val_rmse, [want, want], rtol=1e-6)
    with pytest.raises(ValueError, match="rating_range"):
        train_minibatch(
            KEY, loss_fn, params, (truth,), optimizer=optax.sgd(0.0), batch_size=5, num_epochs=1,
            val_arrays=(pred, truth), predict_fn=lambda p, x: x, rating_range=(5.0, 1.0),
        )  # fmt: skip


def _recording(monkeypatch, module, calls: list, name="train_minibatch"):
    real = getattr(module, name)

    def record(*args, **kwargs):
        if kwargs.get("val_arrays") is not None:
            calls.append(kwargs.get("rating_range"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, record)


def test_optax_early_stopping_clips_to_the_training_range(train, monkeypatch):
    calls = []
    _recording(monkeypatch, optax_mod, calls, "minibatch_program")
    optax_mod.fit_optax(KEY, train, rank=2, num_epochs=2, batch_size=256, validation_fraction=0.2)
    assert calls == [rating_range(train.values)]


@pytest.mark.parametrize("fit", ["mlp", "residual"])
def test_neural_early_stopping_clips_to_the_training_range(train, monkeypatch, fit):
    calls = []
    _recording(monkeypatch, mlp_mod if fit == "mlp" else residual_mod, calls)
    kw = dict(hidden=(4,), num_epochs=2, batch_size=256, refit=False)
    if fit == "mlp":
        mlp_mod.fit_mlp(KEY, train, rank=2, **kw)
    else:
        residual_mod.fit_residual(KEY, train, num_folds=2, **kw)
    assert calls == [rating_range(train.values)]


def test_autorec_early_stopping_scores_clipped_predictions(train, monkeypatch):
    """A reconstruction of 1000 everywhere scores at most hi - lo once clipped."""
    scores = []
    real = autorec_mod._epochs

    def capture(*args, score_fn=None, **kwargs):
        if score_fn is not None:
            scores.append(score_fn)
        return real(*args, score_fn=score_fn, **kwargs)

    monkeypatch.setattr(autorec_mod, "_epochs", capture)
    autorec_mod.fit_autorec(KEY, train, hidden=4, num_epochs=1, patience=1, batch_size=16, refit=False)
    (score,) = scores
    width = train.num_users  # item-based
    far = autorec_mod.AutoRecParams(
        W1=jnp.zeros((width, 4)), b1=jnp.zeros(4), W2=jnp.zeros((4, width)), b2=jnp.full(width, 1000.0)
    )
    lo, hi = rating_range(train.values)
    assert score(far) <= hi - lo + 1e-6
