"""Raw-id predictions, top-N recommendations, fold-in of new users and item titles."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_preset
from probmf.fitters.run import fit_model
from probmf.persistence import FittedModel
from probmf.recommend import TitlesFileError, fold_in, predict_pairs, read_titles, recommend, score_user, title_of


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
    # A point estimate's sd is its plug-in sd, the same for every pair.
    assert np.all(p.sd == m.fitted.noise_sd) and m.fitted.noise_sd > 0 and np.all(np.isfinite(p.mean))
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
    assert np.all(sd == m.fitted.noise_sd) and set(items) == set(data.items[sel])


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


def test_fold_in_under_a_posterior_draws_the_gaussian_conditional_row():
    """One posterior draw (repeated R times) with known U, c, mu, tau: the new user's row
    [w; b] ~ N(A^-1 h, A^-1) with A = tau a^T a + P, h = tau a^T (r - mu - c) + P m, a_j = [u_j; 1]
    and the prior (m, P) the draw's empirical one of its user rows (mean and covariance of W;
    bias mean 0, precision 1 / var b). So the folded-in means over items are B E[x] + c + mu
    and their variance over draws diag(B A^-1 B^T), B = [U, 1]; sd^2 adds 1/tau."""
    from types import SimpleNamespace

    from probmf.data.ratings import IdMap
    from probmf.model import MFParams
    from probmf.posterior import Posterior

    rng = np.random.default_rng(3)
    n, m, k, tau, R = 9, 6, 2, 2.0, 20_000
    W = rng.standard_normal((n, k)) @ np.array([[1.0, 0.4], [0.0, 0.6]]) + np.array([0.5, -0.3])
    U = rng.standard_normal((m, k))
    b = rng.standard_normal(n) * 0.5
    b -= b.mean()
    c, mu = rng.standard_normal(m) * 0.3, 3.4
    items, r = np.array([0, 2, 5]), np.array([4.0, 2.0, 5.0])

    P = np.zeros((k + 1, k + 1))
    P[:k, :k] = np.linalg.inv(np.cov(W.T))
    P[k, k] = 1.0 / b.var()
    prior_mean = np.concatenate([W.mean(0), [0.0]])
    a = np.hstack([U[items], np.ones((len(items), 1))])
    A = tau * a.T @ a + P
    x_mean = np.linalg.solve(A, tau * a.T @ (r - mu - c[items]) + P @ prior_mean)
    B = np.hstack([U, np.ones((m, 1))])
    want_mean, want_var = B @ x_mean + c + mu, np.einsum("ij,jk,ik->i", B, np.linalg.inv(A), B)

    repeat = lambda x: jnp.asarray(np.broadcast_to(x, (R, *np.shape(x))), jnp.float32)  # noqa: E731
    post = Posterior(MFParams(repeat(W), repeat(U), repeat(b), repeat(c), repeat(mu)), repeat(tau))
    model = FittedModel("gibbs", {}, SimpleNamespace(posterior=post), IdMap.identity(n), IdMap.identity(m), (1.0, 5.0))
    (mean, sd, draw), got_items = fold_in(model, items, r, rng_key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(got_items, items)
    np.testing.assert_array_less(np.abs(mean - want_mean), 4.5 * np.sqrt(want_var / R))
    np.testing.assert_allclose(sd**2 - 1 / tau, want_var, rtol=4.5 * np.sqrt(2 / R))
    assert np.all(np.abs(draw - want_mean) < 6 * np.sqrt(want_var))  # one draw's means: from the same Gaussian


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            b"1|Toy Story (1995)|01-Jan-1995||\r\n2|Cit\xe9 (1995)|||\r\n",
            {1: "Toy Story (1995)", 2: "Cit\u00e9 (1995)"},
        ),
        (
            b"1::Toy Story (1995)::Animation|Comedy\n\n2::GoldenEye (1995)::Action\n",
            {1: "Toy Story (1995)", 2: "GoldenEye (1995)"},
        ),
        (b'movieId,title,genres\n1,"Toy Story, The (1995)",Animation|Comedy\n', {1: "Toy Story, The (1995)"}),
        ("\ufeffitemId,name\n1,Caf\u00e9\n".encode(), {1: "Caf\u00e9"}),  # UTF-8 with a byte-order mark
        (b"tt01|A title\ntt02||\n", {"tt01": "A title"}),  # string ids; an empty title is left out
    ],
)
def test_read_titles_formats(tmp_path, content, expected):
    path = tmp_path / "titles"
    path.write_bytes(content)
    assert read_titles(path) == expected


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no titles"),
        (b"\x00\x01\x02", "not a text file"),
        (b"just some words\n", "line 1: expected id and title"),
        (b"1|A\n2\n", "line 2: expected at least 2 fields"),
        (b"1,A\n1,B\n", "line 2: item id '1' appears twice (first on line 1)"),
    ],
)
def test_read_titles_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "titles"
    path.write_bytes(content)
    with pytest.raises(TitlesFileError, match=re.escape(message)) as err:
        read_titles(path)
    assert str(err.value).startswith(str(path))


def test_title_of_matches_ids_across_int_and_text():
    titles = {17: "Seventeen", "x7": "Text id"}
    assert title_of(titles, np.int64(17)) == title_of(titles, "17") == "Seventeen"
    assert title_of(titles, np.str_("x7")) == "Text id"
    assert title_of(titles, 18) is None and title_of(None, 17) is None and title_of({}, "17") is None


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["gaussian", "rounded"])
def test_a_new_user_folded_in_from_attributes_alone_is_predicted_as_a_cold_user_with_them(likelihood):
    """No ratings and user 4's attribute row: in every draw the fold-in's row is the draw's
    cold-user prior N(m + x A, S), N(x A_b, v), which is what the posterior predicts for user 4,
    a user of the id map with no training rating (with time effects "now" and either
    likelihood); without attributes, an unknown id's prediction (the average row's shift)."""
    from probmf.data.ratings import IdMap, Ratings
    from probmf.data.synthetic import synthetic_ratings

    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=400, rank=2, noise=0.5, seed=7)
    rng = np.random.default_rng(1)
    days = rng.integers(0, 400, len(ratings))
    ratings = Ratings(ratings.users, ratings.items, np.clip(np.round(ratings.values), 1, 5), IdMap.identity(30),
                      IdMap.identity(20), days.astype(np.int64) * 86_400, "r.csv")  # fmt: skip
    train = ratings.take(ratings.users != 4)
    X = (rng.random((30, 5)) < 0.4).astype(np.float64)
    m = _model("gibbs", train, rank=2, num_warmup=5, num_samples=6, user_features=X, time=True, likelihood=likelihood)
    everything = np.arange(20)
    cold = predict_pairs(m, np.full(20, 4), everything, clip=False)
    unknown = predict_pairs(m, np.full(20, 10_000), everything, clip=False)
    (mean, sd, draw), rated = fold_in(m, [], [], attributes=X[4], rng_key=jax.random.PRNGKey(2))
    assert rated.size == 0 and not cold.known.any()
    np.testing.assert_allclose(mean, cold.mean, rtol=1e-5)
    np.testing.assert_allclose(sd, cold.sd, rtol=1e-4)
    (mean, sd, _), _ = fold_in(m, [], [])
    np.testing.assert_allclose(mean, unknown.mean, rtol=1e-5)
    np.testing.assert_allclose(sd, unknown.sd, rtol=1e-4)
    # The attributes move the prediction (the planted rows differ), and one rating moves it more.
    assert np.max(np.abs(cold.mean - unknown.mean)) > 1e-3
    (one, _, _), _ = fold_in(m, [3], [5.0], attributes=X[4])
    assert one[3] > cold.mean[3]
    with pytest.raises(ValueError, match="must be 5 numbers"):
        fold_in(m, [], [], attributes=X[4, :3])
    with pytest.raises(ValueError, match="finite numbers, got nan in column 2"):
        fold_in(m, [], [], attributes=np.where(np.arange(5) == 2, np.nan, X[4]))
    with pytest.raises(ValueError, match="finite ratings, got nan for item 3"):
        fold_in(m, [3], [np.nan], attributes=X[4])
    with pytest.raises(ValueError, match="user attributes"):
        fold_in(_model("gibbs", train, rank=2, num_warmup=2, num_samples=2), [], [], attributes=X[4])
