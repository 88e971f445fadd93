"""Side information in the Gibbs sampler (`probmf.fitters.gibbs.features`): each side block's
attribute and implicit draws against their exact conditionals, cold rows predicted from their
attributes, planted attribute effects recovered, and the options, checkpoints and saved
models of a fit with attributes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from probmf.data.ratings import IdMap, Ratings
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.gibbs import (
    FeatureSide,
    ImplicitSide,
    feature_operator,
    fit_gibbs,
    implicit_operator,
    init_state,
    row_priors,
)
from probmf.fitters.gibbs.kernel import _side_prior, _terms
from probmf.metrics import rmse
from probmf.model import MFParams
from probmf.objectives import Hyperpriors
from probmf.posterior import RowPrior, draw_predictive


@pytest.fixture(scope="module")
def small():
    """30 users, 20 items; user 4 and item 6 have no training rating (cold, in the id maps);
    attributes for both sides (a zero row each, multi-hot users, numeric items)."""
    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    train = ratings.take((ratings.users != 4) & (ratings.items != 6))
    rng = np.random.default_rng(0)
    X_users = (rng.random((30, 4)) < 0.4).astype(np.float64)
    X_users[3] = 0.0
    X_items = rng.standard_normal((20, 3))
    X_items[0] = 0.0
    return train, sp.csr_matrix(X_users), X_items


def _whitened(Z, resid, F, c, P):
    """E = K^T (Z - M) L with M = (F^T F + c I)^-1 F^T resid, F^T F + c I = K K^T and P = L L^T:
    iid N(0, 1) entries (S, C, d) exactly when each Z (S, C, d) is its matrix-normal
    conditional given ``resid`` (S, N, d), c (S,) and P (S, d, d)."""
    C = F.shape[1]
    row_prec = F.T @ F + c[:, None, None] * np.eye(C)
    M = np.linalg.solve(row_prec, np.einsum("nc,snd->scd", F, resid))
    K, L = np.linalg.cholesky(row_prec), np.linalg.cholesky(P)
    return np.swapaxes(K, 1, 2) @ (Z - M) @ L


@pytest.mark.parametrize("linalg", ["lapack", "jax"])
def test_each_term_of_the_side_block_is_drawn_from_its_exact_conditional(linalg):
    """One side block with implicit feedback and attributes: given what it drew before them
    (mu, Lam, lam_b) and the terms' inputs, Y | T - m - X A_old, P, c_Y and then
    A | T - m - F Y_new, P, c_A are matrix normal with row precision F^T F + c I (X^T X +
    c_A I) and column covariance P^-1; whitened by those, every draw's entries are iid
    N(0, 1). c_Y and c_A | their vectors are Gamma(a + C(k+1)/2, b + tr(Z P Z^T)/2): their
    conditional CDFs at the draws are uniform. 20k draws; |z| < 4.5 and KS p > 1e-3."""
    rng = np.random.default_rng(1)
    n, k, C = 7, 2, 4
    rows = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6])
    cols = np.array([0, 2, 1, 0, 1, 3, 3, 2, 3, 0, 1, 2])
    op_y = implicit_operator(rows, cols, n, C)
    F = np.zeros((n, C))
    F[rows, cols] = 1.0 / np.sqrt(np.bincount(rows)[rows])
    X = np.array([[1.0, 0, 0.5], [0, 1, -1.2], [1, 0, 0.3], [0, 0, 0], [0, 1, 2.0], [1, 1, -0.4], [0, 0, 1.1]])
    op_a = feature_operator(sp.csr_matrix(X))
    T = rng.standard_normal((n, k + 1)) + 0.5
    Y0, A0 = rng.standard_normal((C, k + 1)), rng.standard_normal((X.shape[1], k + 1))
    c_y0, c_a0 = 0.7, 1.8
    h = Hyperpriors(a_implicit=2.0, b_implicit=0.5, a_features=3.0, b_features=1.5)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    implicit, features = ImplicitSide(f32(Y0), jnp.float32(c_y0)), FeatureSide(f32(A0), jnp.float32(c_a0))

    def block(key):
        key_nw, key_b, key_t = jax.random.split(key, 3)
        terms = _terms(key_t, 0, implicit, op_y, features, op_a, h)
        keys = (key_nw, key_b)
        mu, lam, lam_b, _, (side_y, side_a) = _side_prior(keys, f32(T[:, :k]), f32(T[:, k]), terms, h, linalg)
        return mu, lam, lam_b, side_y.Y, side_y.c, side_a.A, side_a.c

    num = 20_000
    out = jax.jit(jax.vmap(block))(jax.random.split(jax.random.PRNGKey(0), num))
    mu, lam, lam_b, Y, c_y, A, c_a = (np.asarray(a, np.float64) for a in out)
    P = np.zeros((num, k + 1, k + 1))
    P[:, :k, :k], P[:, k, k] = lam, lam_b
    m = np.concatenate([mu, np.zeros((num, 1))], axis=1)[:, None, :]
    E_y = _whitened(Y, T - m - X @ A0, F, np.full(num, c_y0), P)
    E_a = _whitened(A, T - m - np.einsum("nc,scd->snd", F, Y), X, np.full(num, c_a0), P)
    for name, E in (("Y", E_y), ("A", E_a)):
        flat = E.reshape(num, -1)
        z_mean = flat.mean(0) * np.sqrt(num)
        cov = np.cov(flat.T)
        assert np.all(np.abs(z_mean) < 4.5), (name, z_mean)
        np.testing.assert_allclose(cov, np.eye(flat.shape[1]), atol=4.5 * np.sqrt(2.0 / num), err_msg=name)
    for name, c, Z, a, b in (("c_Y", c_y, Y, h.a_implicit, h.b_implicit), ("c_A", c_a, A, h.a_features, h.b_features)):
        shape = a + Z.shape[1] * (k + 1) / 2.0
        rate = b + 0.5 * np.einsum("scd,sde,sce->s", Z, P, Z)
        u = stats.gamma.cdf(c, shape, scale=1.0 / rate)
        assert stats.kstest(u, "uniform").pvalue > 1e-3, name


def _rows(users, items, values, num_users, num_items):
    return Ratings(np.asarray(users), np.asarray(items), np.asarray(values, np.float32), IdMap.identity(num_users),
                   IdMap.identity(num_items))  # fmt: skip


def test_a_cold_row_is_predicted_from_its_attributes_like_monte_carlo():
    """A cold user of the id map with attributes x: w ~ N(m + x A_w, S), b ~ N(x A_b, v) in
    the draw; an unknown id takes the mean row xbar for x; against sampling the rows and the
    noise."""
    rng = np.random.default_rng(2)
    k, n, m, G, tau = 2, 3, 4, 3, 3.0
    params = MFParams(*(jnp.asarray(a, jnp.float32) for a in (
        rng.normal(size=(n, k)), rng.normal(size=(m, k)), rng.normal(size=n), rng.normal(size=m), 3.0)))  # fmt: skip
    cov_u, cov_i = np.diag([0.3, 0.5]), np.array([[0.4, 0.1], [0.1, 0.2]])
    A = rng.normal(size=(G, k + 1))
    prior_u = RowPrior(*(jnp.asarray(a, jnp.float32) for a in (rng.normal(size=k), cov_u, 0.2, A)))
    prior_i = RowPrior(*(jnp.asarray(a, jnp.float32) for a in (rng.normal(size=k), cov_i, 0.1)))
    X = np.array([[1.0, 0, 0], [0, 0, 0], [0.5, 1, -2]])
    coo = sp.coo_matrix(X)
    features = ((jnp.asarray(coo.row, jnp.int32), jnp.asarray(coo.col, jnp.int32), jnp.asarray(coo.data, jnp.float32)),
                None)  # fmt: skip
    seen = (jnp.array([True, False, False]), jnp.array([True, True, False, True]))
    # cold user 2 with attributes, cold user 1 with a zero row, -1; item 2 cold; both cold
    users, items = jnp.array([2, 1, -1, 2, 0], jnp.int32), jnp.array([0, 0, 1, 2, 3], jnp.int32)
    mean, var = (np.asarray(a, np.float64) for a in draw_predictive(params, tau, users, items, (prior_u, prior_i), seen,
                                                                    features=features))  # fmt: skip
    S = 400_000
    W, U, b, c, mu = (np.asarray(a, np.float64) for a in params)
    for p in range(len(users)):
        u, i = int(users[p]), int(items[p])
        shift = (X[u] if u >= 0 else X.mean(0)) @ A  # an unknown id: the mean row's
        if u == 0:
            w, bw = np.broadcast_to(W[u], (S, k)), b[u]
        else:
            w = np.asarray(prior_u.mean) + shift[:k] + rng.normal(size=(S, k)) @ np.linalg.cholesky(cov_u).T
            bw = shift[k] + np.sqrt(0.2) * rng.normal(size=S)
        if i == 2:
            v = np.asarray(prior_i.mean) + rng.normal(size=(S, k)) @ np.linalg.cholesky(cov_i).T
            cv = np.sqrt(0.1) * rng.normal(size=S)
        else:
            v, cv = np.broadcast_to(U[i], (S, k)), c[i]
        r = np.sum(w * v, axis=1) + bw + cv + mu + rng.normal(size=S) / np.sqrt(tau)
        assert abs(mean[p] - r.mean()) < 4.5 * r.std() / np.sqrt(S), p
        assert var[p] == pytest.approx(r.var(), rel=0.02), p
    # a zero row keeps the prior mean m
    assert mean[1] == pytest.approx(float(np.asarray(prior_u.mean) @ U[0] + c[0] + mu), rel=1e-6)


def test_row_priors_carry_the_attribute_vectors(small):
    train, X_users, X_items = small
    params = MFParams(jnp.zeros((30, 2)), jnp.zeros((20, 2)), jnp.zeros(30), jnp.zeros(20), jnp.float32(3.0))
    state = init_state(params, 2.0, features=(4, None))
    prior_u, prior_i = row_priors(state)
    assert prior_u.attributes.shape == (4, 3) and prior_i.attributes is None
    assert row_priors(init_state(params, 2.0))[0].attributes is None


@pytest.mark.parametrize(
    "kwargs",
    [pytest.param(dict(implicit=True), marks=pytest.mark.slow),
     pytest.param(dict(implicit=True, likelihood="rounded", item_features=None), marks=pytest.mark.slow)],
)  # fmt: skip
def test_attributes_run_with_each_variant_and_the_summary_matches_the_draws(small, kwargs):
    """With implicit feedback and the rounded likelihood, attributes on both sides or one:
    finite draws, and the running summary at fit-time pairs equals the kept draws'
    predictive, cold rows too (the two paths through `draw_predictive`)."""
    train, X_users, X_items = small
    if kwargs.get("likelihood") == "rounded":
        train = _rows(train.users, train.items, np.clip(np.round(train.values), 1, 5), 30, 20)
    pairs = (np.array([0, 4, 4, -1, 7, 3], np.int32), np.array([1, 2, 6, 0, 6, -1], np.int32))
    kwargs = dict(user_features=X_users, item_features=X_items) | kwargs
    res = fit_gibbs(jax.random.PRNGKey(5), train, rank=2, num_warmup=3, num_samples=4, predict_pairs=pairs, **kwargs)
    for leaf in jax.tree.leaves(res.posterior):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert res.posterior.priors[0].attributes.shape == (4, 4, 3)
    assert (res.posterior.priors[1].attributes is None) == (kwargs["item_features"] is None)
    ref = res.posterior.predictive(*pairs)
    np.testing.assert_allclose(np.asarray(res.summary.predictive(*pairs)), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # the cold user 4's attributes move its predictions away from the unknown id's
    assert abs(float(ref[0][1]) - float(res.posterior.predictive([-1], [2])[0][0])) > 1e-4


def test_dense_and_sparse_attributes_are_the_same_matrix():
    from probmf.fitters.gibbs import feature_matrix

    X = np.array([[0.0, 1.0, 0.0], [2.5, 0.0, -1.0]])
    a, b = feature_matrix(X, "user"), feature_matrix(sp.coo_matrix(X), "user")
    for x, y in ((a.data, b.data), (a.indices, b.indices), (a.indptr, b.indptr)):
        np.testing.assert_array_equal(x, y)
    assert a.nnz == 3 and a.dtype == np.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(user_features=np.ones((29, 2))), "user_features has 29 rows; it needs 30, one per user"),
        (dict(item_features=sp.csr_matrix((21, 2))), "item_features has 21 rows; it needs 20, one per item"),
        (dict(user_features=np.ones(30)), "user_features must be a 2-d matrix"),
        (dict(item_features=np.ones((20, 0))), "item_features has no columns"),
        (dict(user_features=np.full((30, 2), np.nan)), "user_features holds NaN"),
        (dict(user_features=np.array([["a"] * 2] * 30)), "user_features must be a 2-d scipy.sparse or numpy"),
        (dict(item_features=sp.csr_matrix((20, 12_001))), "item_features has 12001 columns"),
    ],
)
def test_bad_attribute_matrices_fail_before_sampling_naming_the_side(small, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_gibbs(jax.random.PRNGKey(0), small[0], rank=2, num_warmup=1, num_samples=1, **kwargs)


@pytest.mark.slow
def test_featureless_runs_keep_their_checkpoint_fingerprint(small, tmp_path):
    """A fit without attributes checkpoints under the name it had before side information
    (its options hold no feature keys), so its older checkpoints still resume."""
    from probmf.checkpoint import fit_checkpoint

    train = small[0]
    key = jax.random.PRNGKey(2)
    fit_gibbs(key, train, rank=2, num_warmup=1, num_samples=1, checkpoint=str(tmp_path), checkpoint_every=2)
    old = dict(rank=2, num_warmup=1, num_samples=1, thin=1, init_sweeps=10, likelihood="gaussian", implicit=False,
               keep_draws=True, linalg="lapack", devices=1)  # fmt: skip
    assert [p.name for p in tmp_path.glob("*.npz")] == [fit_checkpoint(tmp_path, 2, "gibbs", key, train, old).path.name]


@pytest.mark.slow
def test_attributes_enter_the_fingerprint_by_digest_and_a_cut_run_resumes_bit_for_bit(small, tmp_path, monkeypatch):
    """Other attribute values are another run; a run interrupted after a save resumes to the
    uninterrupted chain, attribute vectors included (they are part of the saved state)."""
    import probmf.checkpoint as ckpt

    train, X_users, X_items = small
    key, opts = jax.random.PRNGKey(2), dict(rank=2, num_warmup=2, num_samples=4, checkpoint_every=2, implicit=True)
    whole = fit_gibbs(key, train, checkpoint=str(tmp_path / "whole"), user_features=X_users, **opts)
    other = X_users.toarray()
    other[0, 0] = 2.0
    fit_gibbs(key, train, checkpoint=str(tmp_path / "whole"), user_features=other, **opts)
    assert len(list((tmp_path / "whole").glob("gibbs-*.npz"))) == 2

    real_save, saves = ckpt.save, []

    def save_then_fail(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        fit_gibbs(key, train, checkpoint=str(tmp_path / "cut"), user_features=X_users, **opts)
    monkeypatch.setattr(ckpt, "save", real_save)
    assert saves == [1]
    resumed = fit_gibbs(key, train, checkpoint=str(tmp_path / "cut"), user_features=X_users, **opts)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_model_with_attributes_saves_and_loads_and_an_older_file_still_loads(small, tmp_path):
    """Round trip of a fit with attributes (its options' matrix recorded by digest); a file
    written before side information, without the ``attributes`` and ``features`` fields,
    loads as a posterior without them."""
    from probmf.persistence import FittedModel, load_model, save_model

    train, X_users, X_items = small
    res = fit_gibbs(jax.random.PRNGKey(0), train, rank=2, num_warmup=2, num_samples=3, user_features=X_users,
                    item_features=X_items)  # fmt: skip
    pairs = (np.array([0, 4, -1, 2]), np.array([6, 1, 2, 3]))
    save_model(tmp_path / "m", FittedModel.from_training("gibbs", {"user_features": X_users}, res, train))
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    assert meta["options"]["user_features"]["sparse_matrix"]["shape"] == [30, 4]
    np.testing.assert_array_equal(np.asarray(load_model(tmp_path / "m").fitted.predictive(*pairs)),
                                  np.asarray(res.predictive(*pairs)))  # fmt: skip

    posterior = meta["structure"]["fields"]["posterior"]["fields"]
    del posterior["features"]
    for prior in posterior["priors"]["list"]:
        del prior["fields"]["attributes"]
    meta_file.write_text(json.dumps(meta))
    old = load_model(tmp_path / "m").fitted.posterior
    assert old.features is None and old.priors[0].attributes is None
    bare = res.posterior._replace(
        features=None, priors=tuple(p._replace(attributes=None) for p in res.posterior.priors)
    )
    np.testing.assert_array_equal(np.asarray(old.predictive(*pairs)), np.asarray(bare.predictive(*pairs)))


def _grouped(seed, num_users=300, num_cold=60, num_items=120, per_user=4, test_per_user=6, noise=0.4):
    """Ratings where a user's vector and bias depend on a binary attribute (two groups), and
    every user has few ratings: (train, warm test, cold test, attributes (num_users, 2)).
    The last ``num_cold`` users have attributes but no training rating."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, num_users)
    centre, bias = np.array([[1.0, 0.6], [-1.0, -0.6]]), np.array([0.7, -0.7])
    W = centre[group] + 0.25 * rng.standard_normal((num_users, 2))
    b = bias[group] + 0.1 * rng.standard_normal(num_users)
    U = rng.normal(0, 0.8, (num_items, 2))
    c = 0.2 * rng.standard_normal(num_items)
    split = {"train": ([], []), "test": ([], [])}
    for i in range(num_users):
        chosen = rng.choice(num_items, per_user + test_per_user, replace=False)
        warm = i < num_users - num_cold
        split["train"][0].extend([i] * per_user if warm else [])
        split["train"][1].extend(chosen[:per_user] if warm else [])
        split["test"][0].extend([i] * test_per_user)
        split["test"][1].extend(chosen[per_user:])

    def ratings(users, items):
        users, items = np.array(users), np.array(items)
        values = 3.5 + np.sum(W[users] * U[items], 1) + b[users] + c[items] + noise * rng.standard_normal(users.size)
        return _rows(users, items, values, num_users, num_items)

    train, test = ratings(*split["train"]), ratings(*split["test"])
    cold = test.users >= num_users - num_cold
    X = np.eye(2)[group]
    return train, test.take(~cold), test.take(cold), X


@pytest.mark.slow
def test_planted_group_effects_are_learned_from_the_attributes():
    """Users' vectors and biases differ by group and each user has four ratings: with the
    group one-hot the held-out RMSE is clearly lower, and cold users (attributes, no
    ratings) are predicted far better than by the featureless posterior or by biases alone."""
    train, warm, cold, X = _grouped(seed=0)
    scores = {}
    for name, features in (("plain", None), ("features", sp.csr_matrix(X))):
        res = fit_gibbs(jax.random.PRNGKey(0), train, rank=2, num_warmup=60, num_samples=120, user_features=features)
        scores[name] = {part: rmse(res.predict(test.users, test.items), test.values)
                        for part, test in (("warm", warm), ("cold", cold))}  # fmt: skip
    mu = float(np.mean(train.values))
    item_bias = np.bincount(train.items, train.values - mu, 120) / np.maximum(np.bincount(train.items, None, 120), 1)
    scores["bias_only_cold"] = rmse(mu + item_bias[cold.items], cold.values)
    assert scores["features"]["warm"] < scores["plain"]["warm"] - 0.05, scores
    assert scores["features"]["cold"] < scores["plain"]["cold"] - 0.2, scores
    assert scores["features"]["cold"] < scores["bias_only_cold"] - 0.2, scores


def test_a_feature_table_is_aligned_with_the_training_ids(small):
    """A `FeatureTable` on raw ids becomes the design matrix of the training id map: row d
    holds the attributes of the raw id at dense index d, an id without a row is a zero row
    (with a warning), and the options of a row or saved model name the table, not its data."""
    from probmf.data.features import FeatureTable, MissingFeaturesWarning, from_columns, plain_options
    from probmf.fitters.gibbs.features import side_matrix

    id_map = IdMap(np.array([10, 20, 30]))  # dense 0, 1, 2 are raw 10, 20, 30
    table = from_columns([30, 10, 99], {"group": ["b", "a", "a"]}, source="users.csv")
    with pytest.warns(MissingFeaturesWarning, match="users.csv"):
        X = side_matrix(table, id_map, "user")
    np.testing.assert_array_equal(X.toarray(), [[1, 0], [0, 0], [0, 1]])  # raw 20 has no row
    assert isinstance(table, FeatureTable) and side_matrix(X, id_map, "user") is X
    described = plain_options({"user_features": table, "rank": 3})
    assert described == {"user_features": table.describe(), "rank": 3}
    assert "users.csv" in json.dumps(described)


@pytest.mark.slow
def test_the_estimator_and_the_cli_take_feature_tables(tmp_path, capsys):
    """`Recommender` passes a `FeatureTable` to the sampler (raw ids in, raw ids out), and
    ``probmf evaluate --user-features`` reads one from a file, its row naming the file."""
    import probmf
    from probmf.cli import main
    from probmf.data.features import from_columns

    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    df = ratings.to_dataframe()
    users = from_columns(np.arange(30), {"g": np.arange(30) % 2})
    options = {"rank": 2, "num_warmup": 5, "num_samples": 5, "init_sweeps": 2}
    rec = probmf.Recommender("gibbs", user_features=users, **options).fit(df)
    pred = rec.predict(df.head(5))
    assert np.all(np.isfinite(pred["mean"])) and pred["known"].all()
    assert rec.model_.options["user_features"] == users.describe()

    path = tmp_path / "users.csv"
    path.write_text("userId,g\n" + "".join(f"{u},{u % 2}\n" for u in range(30)))
    held = np.random.default_rng(0).random(len(df)) < 0.2
    df[~held].to_csv(tmp_path / "train.csv", index=False)
    df[held].to_csv(tmp_path / "test.csv", index=False)
    files = ["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--user-features", str(path)]
    args = ["evaluate", *files, "--model", "gibbs", "--rank", "2", "--num-warmup", "5", "--num-samples", "5", "--json"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "users.csv" in row["options"]["user_features"] and np.isfinite(row["rmse"])


@pytest.mark.slow
def test_a_new_user_is_recommended_from_their_attributes_by_the_estimator_and_the_cli(tmp_path, capsys):
    """User 4 has attributes but no training rating and is not in the model: `Recommender`
    and ``probmf recommend --user 4 --user-features`` predict them from their row, as
    `probmf.recommend.fold_in` with the row and no ratings does; a file with other columns,
    without the user, or a model without attributes are refused by name."""
    import probmf
    from probmf.cli import main
    from probmf.data.features import read_features, row_of
    from probmf.persistence import load_model
    from probmf.recommend import fold_in

    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    df = ratings.to_dataframe()
    df = df[df["userId"] != 4]
    path = tmp_path / "users.csv"
    path.write_text("userId,g,age\n" + "".join(f"{u},{'ab'[u % 2]},{20 + u}\n" for u in range(30)))
    table = read_features(path)
    options = {"rank": 2, "num_warmup": 5, "num_samples": 5, "init_sweeps": 2}
    rec = probmf.Recommender("gibbs", user_features=table, **options).fit(df)
    got = rec.recommend([4], n=20)
    (mean, _, _), _ = fold_in(rec.model_, [], [], attributes=row_of(table, 4))
    want = mean[rec.model_.item_ids.index(got["item"].to_numpy())]
    np.testing.assert_allclose(got["mean"], want, rtol=1e-6)
    assert not got["known"].any() and np.all(np.diff(got["score"]) <= 0)
    one = rec.fold_in({int(df["movieId"].iloc[0]): 5.0}, user=4, n=20)
    assert not np.allclose(np.sort(one["mean"])[:5], np.sort(got["mean"])[:5])  # the rating moves it

    df.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "model"
    fit = ["fit", "--train", str(tmp_path / "train.csv"), "--model", "gibbs", "--rank", "2", "--num-warmup", "5",
           "--num-samples", "5", "--user-features", str(path), "--out", str(out)]  # fmt: skip
    assert main(fit) == 0
    capsys.readouterr()
    new_user = ["--user", "4", "--user-features", str(path)]
    assert main(["recommend", "--model", str(out), *new_user, "-n", "20", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    loaded = load_model(out)
    (mean, _, _), _ = fold_in(loaded, [], [], attributes=row_of(table, 4))
    np.testing.assert_allclose([r["mean"] for r in rows],
                               mean[loaded.item_ids.index([r["movieId"] for r in rows])], atol=1e-4)  # fmt: skip
    other = tmp_path / "other.csv"
    other.write_text("userId,g\n" + "".join(f"{u},{'ab'[u % 2]}\n" for u in range(30)))
    for flags, message in (
        (["--user-features", str(other)], "other.csv: its columns"),
        (["--user", "77", "--user-features", str(path)], "has no row for user 77"),
        ([], "not known to the model"),
    ):
        argv = ["recommend", "--model", str(out), *(["--user", "4"] if "--user" not in flags else []), *flags]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
