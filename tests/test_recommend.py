"""Raw-id predictions, top-N recommendations and fold-in of new users."""

import jax
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_preset
from probmf.evaluate import fit_model
from probmf.persistence import FittedModel
from probmf.recommend import fold_in, predict_pairs, recommend, score_user


@pytest.fixture(scope="module")
def data():
    return synthetic_preset("tiny", seed=5)[0]


def _model(name, data, **options):
    fitted, opts, _ = fit_model(name, data, options=options)
    return FittedModel.from_training(name, opts, fitted, data)


def test_predict_pairs_flags_unknown_ids(data):
    m = _model("als", data, rank=2, num_sweeps=5)
    raw_u = np.array([data.user_ids.raw[0], 10_000, data.user_ids.raw[1]])
    raw_i = np.array([data.item_ids.raw[0], data.item_ids.raw[1], 99_999])
    p = predict_pairs(m, raw_u, raw_i)
    np.testing.assert_array_equal(p.known, [True, False, False])
    assert p.sd is None and np.all(np.isfinite(p.mean))
    assert np.all((p.mean >= m.rating_range[0]) & (p.mean <= m.rating_range[1]))


def test_recommend_leaves_out_rated_items_and_ranks_by_mean(data):
    m = _model("als", data, rank=2, num_sweeps=5)
    scores = score_user(m, 4)
    rec = recommend(m, scores, n=5, exclude=m.rated(4))
    rated_raw = set(data.item_ids.raw[data.items[data.users == 4]])
    assert len(rec.items) == 5 and not rated_raw & set(rec.items)
    assert np.all(np.diff(rec.score) <= 0)
    with pytest.raises(ValueError, match="Bayesian"):
        recommend(m, scores, strategy="ucb")


def test_bayesian_strategies(data):
    m = _model("gibbs", data, rank=2, num_warmup=5, num_samples=20)
    mean, sd, draw = score_user(m, 2, rng_key=jax.random.PRNGKey(1))
    assert np.all(sd > 0) and draw.shape == mean.shape
    ucb = recommend(m, (mean, sd, draw), n=3, strategy="ucb")
    np.testing.assert_allclose(ucb.score, ucb.mean + 1.6448536 * ucb.sd, rtol=1e-5)
    thompson = recommend(m, (mean, sd, draw), n=3, strategy="thompson")
    assert len(thompson.items) == 3


def test_fold_in_reproduces_an_existing_users_als_row(data):
    """At an ALS fixed point, folding in a copy of user 7's ratings gives user 7's predictions."""
    m = _model("als", data, rank=2, num_sweeps=60)
    sel = data.users == 7
    (mean, sd, _), items = fold_in(m, data.item_ids.raw[data.items[sel]], data.values[sel])
    existing, _, _ = score_user(m, 7)
    np.testing.assert_allclose(mean, existing, atol=2e-3)
    assert sd is None and set(items) == set(data.items[sel])


def test_fold_in_for_a_posterior_carries_uncertainty(data):
    m = _model("gibbs", data, rank=2, num_warmup=5, num_samples=20)
    sel = data.users == 3
    (mean, sd, draw), _ = fold_in(
        m, data.item_ids.raw[data.items[sel]], data.values[sel], rng_key=jax.random.PRNGKey(0)
    )
    assert mean.shape == sd.shape == draw.shape == (data.num_items,)
    assert np.all(sd > 0) and np.all(np.isfinite(mean))
    with pytest.raises(ValueError, match="not known"):
        fold_in(m, [123_456], [4.0])
