"""The optax fitter and the minibatch trainer: exact steps, masking, MAP vs MLE, early stopping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_preset, synthetic_ratings
from probmf.fitters import optax_mf
from probmf.fitters.minibatch import make_epoch, train_minibatch
from probmf.fitters.optax_mf import fit_optax, mf_objective
from probmf.metrics import predict_ratings, rmse
from probmf.model import init_params, predict
from probmf.objectives import Priors, map_loss, regularized_loss

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def small():
    ratings, truth = synthetic_ratings(num_users=50, num_items=30, num_ratings=600, rank=3, seed=1)
    return ratings, truth


def _arrays(r):
    return jnp.asarray(r.users), jnp.asarray(r.items), jnp.asarray(r.values)


def _setup(ratings, lam=0.7, lam_bias=2.0, rank=3):
    priors = Priors.uniform(lam, lam_bias)
    params = init_params(KEY, ratings.num_users, ratings.num_items, rank, scale=0.3, mu=float(ratings.values.mean()))
    n = len(ratings)

    def loss_fn(p, batch, weights):
        return mf_objective(p, batch, weights, priors=priors, num_ratings=n)

    return params, priors, loss_fn


def test_one_sgd_step_is_the_gradient_step_of_the_map_objective(small):
    """Full batch: theta' = theta - lr * grad(map_loss) / n, with mu held fixed."""
    ratings, _ = small
    u, i, r = _arrays(ratings)
    params, priors, loss_fn = _setup(ratings)
    lr = 0.3
    res = train_minibatch(
        KEY, loss_fn, params, (u, i, r), optimizer=optax.sgd(lr), batch_size=len(ratings), num_epochs=1
    )
    grad = jax.grad(map_loss)(params, u, i, r, priors)
    n = len(ratings)
    for name in ("W", "U", "b", "c"):
        want = getattr(params, name) - lr * getattr(grad, name) / n
        np.testing.assert_allclose(getattr(res.params, name), want, rtol=1e-5, atol=1e-6)
    assert float(res.params.mu) == float(params.mu)
    # The bias gradient by hand: d/db_i = -sum_{j in Psi_i} e_ij + lam_b b_i (b = 0 here).
    err = np.asarray(r - predict(params, u, i))
    want_b = lr * np.bincount(ratings.users, weights=err, minlength=ratings.num_users) / n
    np.testing.assert_allclose(res.params.b, want_b, rtol=1e-4, atol=1e-6)


def test_last_partial_batch_is_masked_not_dropped(small):
    """lr = 0: the epoch loss over batches of 7 (600 = 85 * 7 + 5) is the full objective / n;
    and padding rows at weight 0 change neither a batch loss nor its gradient."""
    ratings, _ = small
    u, i, r = _arrays(ratings)
    params, priors, loss_fn = _setup(ratings)
    res = train_minibatch(KEY, loss_fn, params, (u, i, r), optimizer=optax.sgd(0.0), batch_size=7, num_epochs=2)
    full = float(regularized_loss(params, u, i, r, priors)) / len(ratings)
    np.testing.assert_allclose(res.trace.train_loss, [full, full], rtol=1e-5)

    batch = (u[:5], i[:5], r[:5])
    padded = tuple(jnp.concatenate([a[:5], a[7:9]]) for a in (u, i, r))
    w = jnp.array([1.0] * 5 + [0.0] * 2)
    np.testing.assert_allclose(loss_fn(params, padded, w), loss_fn(params, batch, jnp.ones(5)), rtol=1e-6)
    g_pad, g = jax.grad(loss_fn)(params, padded, w), jax.grad(loss_fn)(params, batch, jnp.ones(5))
    for a, b in zip(g_pad, g, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_epoch_compiles_once(small):
    ratings, _ = small
    params, _, loss_fn = _setup(ratings)
    opt = optax.adam(0.01)
    epoch = make_epoch(loss_fn, opt)
    kw = dict(optimizer=opt, batch_size=64, num_epochs=3, epoch_fn=epoch)
    train_minibatch(KEY, loss_fn, params, _arrays(ratings), **kw)
    assert epoch._cache_size() == 1
    train_minibatch(jax.random.PRNGKey(1), loss_fn, params, _arrays(ratings), **kw)
    assert epoch._cache_size() == 1


def test_deterministic_for_a_fixed_key(small):
    ratings, _ = small
    kw = dict(rank=3, num_epochs=4, batch_size=128)
    a, b = fit_optax(KEY, ratings, **kw), fit_optax(KEY, ratings, **kw)
    for x, y in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.trace.train_loss, b.trace.train_loss)
    c = fit_optax(jax.random.PRNGKey(1), ratings, **kw)
    assert not np.allclose(a.params.W, c.params.W)


def test_map_with_vanishing_lambda_matches_mle(small):
    ratings, _ = small
    # SGD: Adam's normalised steps would magnify the vanishing prior gradient.
    kw = dict(rank=3, num_epochs=5, batch_size=100, validation_fraction=0.0, optimizer="sgd", learning_rate=0.5)
    mle = fit_optax(KEY, ratings, objective="mle", **kw)
    map_ = fit_optax(KEY, ratings, objective="map", lam=1e-7, lam_bias=1e-7, **kw)
    for x, y in zip(mle.params, map_.params, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mle.trace.train_loss, map_.trace.train_loss, rtol=1e-5)


def test_reaches_the_noise_floor_on_data_from_the_model():
    ratings, truth = synthetic_ratings(num_users=300, num_items=200, num_ratings=24_000, rank=3, noise=0.5, seed=3)
    train, test = random_split(ratings, 0.2, seed=0)
    res = fit_optax(KEY, train, rank=3, lam=1.0, lam_bias=1.0, weight_exponent=0.0, learning_rate=0.02, batch_size=512)
    pred = predict_ratings(res.params, test)
    # Held-out RMSE near sd(noise) = 0.5, and the fitted means near the planted ones.
    assert rmse(pred, test.values) < 0.55
    assert rmse(pred, truth.mean(test.users, test.items)) < 0.22


def test_mle_overfits_more_than_map_as_rank_grows():
    ratings, _ = synthetic_ratings(num_users=80, num_items=60, num_ratings=1500, rank=2, noise=0.5, seed=4)
    train, test = random_split(ratings, 0.2, seed=0)
    kw = dict(num_epochs=150, batch_size=128, learning_rate=0.02, validation_fraction=0.0, init_scale=0.3)
    gap = {}
    for k in (1, 16):
        fits = {
            obj: fit_optax(KEY, train, rank=k, objective=obj, lam=5.0, lam_bias=2.0, **kw) for obj in ("map", "mle")
        }
        err = {
            obj: (
                rmse(predict_ratings(f.params, train), train.values),
                rmse(predict_ratings(f.params, test), test.values),
            )
            for obj, f in fits.items()
        }
        gap[k] = err["mle"][1] - err["map"][1]
        if k == 16:
            assert err["mle"][0] < err["map"][0] - 0.1  # MLE fits the training ratings closer
            assert err["mle"][1] > err["map"][1] + 0.1  # and generalises worse
    assert gap[16] > gap[1] + 0.1, gap


def test_early_stopping_returns_the_best_epoch():
    ratings, _ = synthetic_ratings(num_users=80, num_items=60, num_ratings=1500, rank=2, noise=0.5, seed=4)
    train, val = random_split(ratings, 0.2, seed=0)
    params = init_params(KEY, ratings.num_users, ratings.num_items, 16, scale=0.3, mu=float(train.values.mean()))
    n = len(train)

    def loss_fn(p, batch, weights):  # MLE at rank 16: overfits after a few epochs
        return mf_objective(p, batch, weights, priors=Priors.uniform(0.0, 0.0), num_ratings=n)

    res = train_minibatch(
        KEY,
        loss_fn,
        params,
        _arrays(train),
        optimizer=optax.adam(0.03),
        batch_size=64,
        num_epochs=200,
        val_arrays=_arrays(val),
        predict_fn=predict,
        patience=4,
    )
    trace = res.trace.val_rmse
    assert len(trace) < 200 and res.best_epoch == int(np.argmin(trace)) == len(trace) - 5
    assert trace[-1] > trace[res.best_epoch] + 1e-3
    got = rmse(predict(res.params, *_arrays(val)[:2]), val.values)
    np.testing.assert_allclose(got, trace[res.best_epoch], rtol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": -1},
        {"rank": 2.5},
        {"objective": "mlp"},
        {"lam": -1.0},
        {"lam_bias": float("nan")},
        {"optimizer": "rmsprop"},
        {"learning_rate": 0.0},
        {"schedule": "linear"},
        {"batch_size": 0},
        {"num_epochs": 0},
        {"validation_fraction": 1.0},
        {"patience": 0},
    ],
)
def test_bad_options_raise_before_compiling(small, bad, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained before validating options")

    monkeypatch.setattr(optax_mf, "minibatch_program", fail)
    with pytest.raises(ValueError, match=next(iter(bad)).replace("lam", "lambda").split("_")[0]):
        fit_optax(KEY, small[0], **bad)


def test_any_optax_transformation_and_a_user_loss_replace_the_named_ones():
    """``optimizer=optax.adam(lr)`` is ``optimizer="adam"`` at a constant ``lr``, and the squared
    error written as a user loss is the default loss, to float rounding."""
    train, _ = synthetic_preset("tiny")
    base = {"rank": 2, "num_epochs": 3, "batch_size": 128}
    named = fit_optax(jax.random.PRNGKey(0), train, optimizer="adam", learning_rate=0.02, schedule="constant", **base)
    given = fit_optax(jax.random.PRNGKey(0), train, optimizer=optax.adam(0.02), **base)
    own_loss = fit_optax(jax.random.PRNGKey(0), train, optimizer="adam", learning_rate=0.02, schedule="constant",
                         loss=lambda pred, r: 0.5 * (r - pred) ** 2, **base)  # fmt: skip
    for other in (given, own_loss):
        for a, b in zip(jax.tree.leaves(named.params), jax.tree.leaves(other.params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_a_robust_user_loss_resists_outlying_ratings():
    """A tenth of the training ratings shifted by +8: the Huber loss (quadratic within 1 of the
    prediction, linear beyond) is pulled less than the squared error, so it predicts the clean
    held-out ratings better (measured: RMSE 0.69 against 1.35)."""
    ratings, _ = synthetic_ratings(num_users=200, num_items=100, num_ratings=6000, rank=2, noise=0.5, seed=1)
    train, test = random_split(ratings, 0.2, seed=0)
    hit = np.random.default_rng(0).random(len(train)) < 0.1
    dirty = dataclasses.replace(train, values=np.where(hit, train.values + 8.0, train.values).astype(np.float32))
    base = {"rank": 2, "num_epochs": 20, "batch_size": 512, "schedule": "constant", "learning_rate": 0.02}
    rmse = {}
    for name, loss in (("squared", None), ("huber", lambda pred, r: optax.huber_loss(pred, r, delta=1.0))):
        fit = fit_optax(jax.random.PRNGKey(0), dirty, loss=loss, **base)
        pred = np.asarray(predict(fit.params, jnp.asarray(test.users), jnp.asarray(test.items)))
        rmse[name] = float(np.sqrt(np.mean((pred - test.values) ** 2)))
    assert rmse["huber"] < rmse["squared"] - 0.1, rmse


def test_custom_optimizers_and_losses_refuse_checkpoints(tmp_path):
    train, _ = synthetic_preset("tiny")
    with pytest.raises(ValueError, match="cannot be fingerprinted"):
        fit_optax(jax.random.PRNGKey(0), train, optimizer=optax.sgd(0.1), checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="cannot be fingerprinted"):
        fit_optax(jax.random.PRNGKey(0), train, loss=optax.huber_loss, checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="loss must be None or a function"):
        fit_optax(jax.random.PRNGKey(0), train, loss="huber")
