"""The blocked Gibbs sampler against its conjugate conditionals and calibration on synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from probmf.data.synthetic import synthetic_ratings
from probmf.encoding import Layout, encode
from probmf.fitters.gibbs import GibbsConfig, _block_prior, _sample_rows, fit_gibbs, sample_normal_wishart
from probmf.fitters.gibbs.chain import AUTO_LAPACK_MAX_RANK
from probmf.metrics import interval_scores
from probmf.model import MFParams, init_params


@pytest.fixture(scope="module")
def small():
    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    return ratings


@pytest.mark.parametrize("linalg", ["lapack", "jax"])
def test_row_draws_have_the_conjugate_mean_and_covariance(small, linalg):
    """With the items fixed, user row x_i = [w_i; b_i] ~ N(A^-1 r, A^-1), A = tau G + P, r = tau h + P m."""
    ratings = small
    enc = encode(ratings)
    p = init_params(jax.random.PRNGKey(1), ratings.num_users, ratings.num_items, 2, scale=0.7, mu=3.5)
    p = p._replace(c=0.3 * jax.random.normal(jax.random.PRNGKey(2), (ratings.num_items,)))
    tau = 2.5
    lam_w = jnp.array([[2.0, 0.3], [0.3, 1.5]])
    prior_prec, prior_mean = _block_prior(lam_w, jnp.array([0.2, -0.1]), 4.0)

    def draw(key):
        W, b, _ = _sample_rows(key, p.W, p.b, p.U, p.c, p.mu, enc.by_user, tau, prior_prec, prior_mean, linalg)
        return jnp.concatenate([W, b[:, None]], axis=1)

    num = 20_000
    x = np.asarray(jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(3), num)), np.float64)
    U, c, mu = (np.asarray(a, np.float64) for a in (p.U, p.c, p.mu))
    P, m = np.asarray(prior_prec, np.float64), np.asarray(prior_mean, np.float64)
    for user in (0, 5, 17):
        sel = ratings.users == user
        a = np.hstack([U[ratings.items[sel]], np.ones((sel.sum(), 1))])
        y = ratings.values[sel] - mu - c[ratings.items[sel]]
        A = tau * a.T @ a + P
        cov = np.linalg.inv(A)
        mean = cov @ (tau * a.T @ y + P @ m)
        se = np.sqrt(np.diag(cov) / num)
        np.testing.assert_array_less(np.abs(x[:, user].mean(0) - mean), 5 * se)
        np.testing.assert_allclose(np.cov(x[:, user].T), cov, atol=5 * np.sqrt(2.0 / num) * np.max(np.diag(cov)))


def test_auto_linalg_is_lapack_up_to_its_rank_and_lapack_free_above():
    """linalg="auto" resolves at validation (so a checkpoint's fingerprint holds what ran); explicit
    choices are kept and unknown ones refused."""
    r = AUTO_LAPACK_MAX_RANK
    assert GibbsConfig(rank=r).validate().linalg == "lapack"
    assert GibbsConfig(rank=r + 1).validate().linalg == "jax"
    assert GibbsConfig(rank=r + 1, linalg="lapack").validate().linalg == "lapack"
    assert GibbsConfig(rank=2, linalg="jax").validate().linalg == "jax"
    with pytest.raises(ValueError, match="linalg must be one of"):
        GibbsConfig(linalg="eigen").validate()


def _z_scores(samples: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(sample mean - expected) / its Monte Carlo standard error, per column of ``samples`` (n, d)."""
    return (samples.mean(0) - expected) / (samples.std(0) / np.sqrt(samples.shape[0]))


@pytest.mark.parametrize("linalg, with_extra", [("lapack", False), ("jax", False), ("lapack", True)])
def test_normal_wishart_draws_match_the_posterior_moments(linalg, with_extra):
    """Lam ~ Wishart(nu*, W*): E[Lam_ij] = nu* W*_ij, Var(Lam_ij) = nu* (W*_ij^2 + W*_ii W*_jj);
    mu | Lam ~ N(mu*, (beta* Lam)^-1), so E[mu] = mu* and Cov(mu) = W*^-1 / (beta* (nu* - k - 1)).
    ``extra`` (m zero-mean vectors with precision c Lam, scatter S) adds m to nu* and S to W*^-1.
    Every moment is checked to |z| < 4.5 Monte Carlo standard errors over 200k draws, which
    tells nu* from nu* + 1 (a 2.3% shift of the mean, ~50 standard errors)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3)) @ np.diag([1.0, 0.5, 2.0]) + 0.4
    beta0, nu0 = 2.0, 3.0
    n, k = X.shape
    xbar = X.mean(0)
    S = (X - xbar).T @ (X - xbar)
    S_extra, m_extra = (np.diag([3.0, 1.0, 0.5]) + 0.2, 25) if with_extra else (np.zeros((k, k)), 0)
    w_inv = np.eye(k) + S + beta0 * n / (beta0 + n) * np.outer(xbar, xbar) + S_extra
    w_star, nu_star, beta_star = np.linalg.inv(w_inv), nu0 + n + m_extra, beta0 + n
    extra = (jnp.asarray(S_extra, jnp.float32), m_extra) if with_extra else None
    num = 200_000
    draws = jax.jit(
        jax.vmap(lambda key: sample_normal_wishart(key, jnp.asarray(X, jnp.float32), beta0, nu0, linalg, extra))
    )(jax.random.split(jax.random.PRNGKey(0), num))
    mu, lam = (np.asarray(d, np.float64) for d in draws)
    iu = np.triu_indices(k)
    lam = lam[:, iu[0], iu[1]]  # (num, k(k+1)/2) distinct entries
    lam_mean = nu_star * w_star[iu]
    lam_var = nu_star * (w_star[iu] ** 2 + np.diag(w_star)[iu[0]] * np.diag(w_star)[iu[1]])
    z_mean = (lam.mean(0) - lam_mean) / np.sqrt(lam_var / num)
    z_var = _z_scores((lam - lam_mean) ** 2, lam_var)
    mu_mean = n * xbar / beta_star
    mu_cov = w_inv / (beta_star * (nu_star - k - 1))
    z_mu = (mu.mean(0) - mu_mean) / np.sqrt(np.diag(mu_cov) / num)
    dev = mu - mu_mean
    z_mu_cov = _z_scores(dev[:, iu[0]] * dev[:, iu[1]], mu_cov[iu])
    for name, z in [("E[Lam]", z_mean), ("Var(Lam)", z_var), ("E[mu]", z_mu), ("Cov(mu)", z_mu_cov)]:
        assert np.all(np.abs(z) < 4.5), (name, z)


@pytest.mark.slow
def test_intervals_are_calibrated_on_data_from_the_model():
    ratings, _ = synthetic_ratings(num_users=200, num_items=150, num_ratings=12_000, rank=3, noise=0.5, seed=11)
    test_mask = np.random.default_rng(1).random(len(ratings)) < 0.2
    train, test = ratings.take(~test_mask), ratings.take(test_mask)
    res = fit_gibbs(jax.random.PRNGKey(0), train, rank=3, num_warmup=30, num_samples=60)
    mean, sd = res.predictive(jnp.asarray(test.users), jnp.asarray(test.items))
    scores = interval_scores(mean, sd, test.values)
    assert 0.85 <= scores["coverage_90"] <= 0.95, scores
    assert 0.44 <= scores["coverage_50"] <= 0.56, scores
    # The noise precision is recovered: 1/tau ~ 0.5^2.
    assert abs(1.0 / np.sqrt(np.mean(res.trace.tau[-60:])) - 0.5) < 0.05


def test_deterministic_for_a_fixed_key(small):
    a = fit_gibbs(jax.random.PRNGKey(4), small, rank=2, num_warmup=3, num_samples=4)
    b = fit_gibbs(jax.random.PRNGKey(4), small, rank=2, num_warmup=3, num_samples=4)
    for x, y in zip(jax.tree.leaves(a.posterior), jax.tree.leaves(b.posterior), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.posterior.num_samples == 4 and a.posterior.draws.W.shape == (4, 30, 2)


@pytest.mark.parametrize(
    "kwargs",
    [dict(rank=0), dict(num_samples=0), dict(thin=0), dict(num_warmup=-1), dict(linalg="magma"), dict(devices=0),
     dict(keep_draws=False), dict(checkpoint_every=0)],
)  # fmt: skip
def test_bad_options_fail_before_sampling(small, kwargs):
    with pytest.raises(ValueError):
        fit_gibbs(jax.random.PRNGKey(0), small, **kwargs)


def test_thinning_keeps_every_thin_th_sweep(small):
    """Draw d is the state after sweep num_warmup + (d + 1) thin - 1: tau matches the trace."""
    res = fit_gibbs(jax.random.PRNGKey(2), small, rank=2, num_warmup=3, num_samples=4, thin=3)
    kept = 3 + 3 * np.arange(1, 5) - 1
    np.testing.assert_array_equal(np.asarray(res.posterior.tau), res.trace.tau[kept])


@pytest.mark.slow
def test_running_summary_equals_the_predictive_of_the_draws(small):
    """keep_draws=False with predict_pairs gives the same predictive as the stored draws."""
    pairs = (small.users[:50], small.items[:50])
    both = fit_gibbs(jax.random.PRNGKey(5), small, rank=2, num_warmup=3, num_samples=6, thin=2, predict_pairs=pairs)
    lean = fit_gibbs(jax.random.PRNGKey(5), small, rank=2, num_warmup=3, num_samples=6, thin=2, predict_pairs=pairs,
                     keep_draws=False)  # fmt: skip
    assert lean.posterior is None and lean.summary.num_samples == 6
    ref = both.posterior.predictive(*pairs)
    for got in (both.summary.predictive(*pairs), lean.predictive(*pairs)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fit-time pairs"):
        lean.predictive(small.users[:3], small.items[:3])


@pytest.mark.slow
def test_jax_linear_algebra_gives_the_same_chain(small):
    """linalg="jax" (no LAPACK) samples the same chain as LAPACK up to rounding."""
    a = fit_gibbs(jax.random.PRNGKey(6), small, rank=2, num_warmup=2, num_samples=3)
    b = fit_gibbs(jax.random.PRNGKey(6), small, rank=2, num_warmup=2, num_samples=3, linalg="jax")
    np.testing.assert_allclose(np.asarray(a.posterior.draws.W), np.asarray(b.posterior.draws.W), atol=2e-3)


@pytest.mark.parametrize("lower, upper", [(-0.5, 1.5), (3.0, np.inf), (-np.inf, -6.0), (9.0, 9.5)])
def test_truncated_normal_draws_have_the_truncated_moments(lower, upper):
    """Including intervals far in a tail, where naive inverse-CDF sampling breaks down."""
    from scipy.stats import truncnorm

    from probmf.fitters.gibbs import truncated_standard_normal

    lo, hi = jnp.full(100_000, lower, jnp.float32), jnp.full(100_000, upper, jnp.float32)
    z = np.asarray(truncated_standard_normal(jax.random.PRNGKey(0), lo, hi), np.float64)
    ref = truncnorm(lower, upper)
    assert np.all((z >= lower) & (z <= upper))
    np.testing.assert_allclose(z.mean(), ref.mean(), atol=5 * ref.std() / np.sqrt(z.size) + 1e-4)
    np.testing.assert_allclose(z.std(), ref.std(), rtol=0.02)


def test_truncated_draws_stay_finite_at_the_ends_of_the_uniform():
    """u = 0 on a half-line to -inf, and u just below 1 on a half-line to +inf straddling
    zero (where Phi(a) + u (1 - Phi(a)) rounds to 1 in float32), both gave +-inf draws."""
    from probmf.fitters.gibbs import truncated_from_uniform

    below_one = np.nextafter(np.float32(1), np.float32(0))
    u = jnp.asarray([0.0, below_one, 0.0, below_one, 0.0, below_one], jnp.float32)
    lower = jnp.asarray([-np.inf, -np.inf, -0.5, -0.5, 2.0, 2.0], jnp.float32)
    upper = jnp.asarray([0.5, 0.5, np.inf, np.inf, np.inf, np.inf], jnp.float32)
    z = np.asarray(truncated_from_uniform(u, lower, upper))
    assert np.all(np.isfinite(z)) and np.all((z >= np.asarray(lower)) & (z <= np.asarray(upper))), z
    assert z[0] < -4 and z[3] > 4  # the ends of the uniform are the ends of the distribution


@pytest.mark.slow
def test_rounded_likelihood_predicts_within_the_levels_and_recovers_the_noise():
    """Ratings drawn as rounded latent Gaussians: the rounded likelihood recovers the latent
    noise sd (the Gaussian one sees the rounding error as extra noise) and its predictive
    means stay inside the rating levels."""
    import dataclasses

    from probmf.fitters.gibbs import rounding_intervals

    ratings, _ = synthetic_ratings(num_users=150, num_items=100, num_ratings=8_000, rank=2, noise=0.6, seed=3)
    latent = ratings.values
    ratings = dataclasses.replace(ratings, values=np.clip(np.round(latent), 1, 5).astype(np.float32))
    levels, lower, upper = rounding_intervals(ratings.values)
    np.testing.assert_array_equal(levels, np.unique(ratings.values))
    assert np.all((lower < ratings.values) & (ratings.values < upper)) and np.isinf(lower).any()
    res = fit_gibbs(jax.random.PRNGKey(0), ratings, rank=2, num_warmup=30, num_samples=40, likelihood="rounded")
    mean, sd = res.predictive(jnp.asarray(ratings.users), jnp.asarray(ratings.items))
    assert float(mean.min()) >= 1.0 and float(mean.max()) <= 5.0 and bool(jnp.all(sd > 0))
    assert abs(1.0 / np.sqrt(np.mean(res.trace.tau[-40:])) - 0.6) < 0.1


def _rounded_reference(pred: float, tau: float, levels) -> tuple[float, float]:
    """E[r], Var[r] of r = the level whose interval (cuts at the midpoints, the end levels
    taking the tails) holds y ~ N(pred, 1/tau), by quadrature of the normal density."""
    from scipy import integrate, stats

    levels = np.asarray(levels, np.float64)
    cuts = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    density = stats.norm(pred, 1 / np.sqrt(tau)).pdf
    p = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        points = [pred] if lo < pred < hi and np.isfinite(lo) and np.isfinite(hi) else None
        p.append(integrate.quad(density, lo, hi, points=points, epsabs=1e-13, epsrel=1e-12)[0])
    p = np.array(p)
    mean = p @ levels
    return mean, p @ (levels - mean) ** 2


# (levels, pred, tau): inside, on a level, on a cut, at and past the end levels; half stars; uneven levels
ROUNDED_CASES = (
    [(np.arange(1.0, 6.0), p, t) for p in (-2.0, 0.7, 1.0, 2.5, 3.0, 3.3, 4.9, 5.0, 6.5) for t in (0.4, 4.0, 30.0)]
    + [(np.arange(0.5, 5.01, 0.5), p, 2.0) for p in (0.4, 2.75, 5.2)]
    + [(np.array([1.0, 2.0, 4.0, 5.0]), p, t) for p in (2.9, 3.0, 4.6) for t in (1.0, 9.0)]
)


def test_rounded_moments_equal_the_rounded_gaussians_mean_and_variance():
    """rounded_moments and the posterior predictive of a rounded-likelihood posterior against
    E[r], Var[r] by numerical integration over each level's interval (cuts at the midpoints)."""
    from probmf.posterior import Posterior, rounded_moments

    moments = jax.jit(jax.vmap(lambda p, t, lv: rounded_moments(p[None], t, lv), in_axes=(0, 0, None)))
    for levels in {tuple(c[0]) for c in ROUNDED_CASES}:
        pred, tau = (np.array([c[i] for c in ROUNDED_CASES if tuple(c[0]) == levels], np.float32) for i in (1, 2))
        got_mean, got_var = (np.asarray(a, np.float64)[:, 0] for a in moments(pred, tau, jnp.asarray(levels)))
        want = np.array([_rounded_reference(float(p), float(t), levels) for p, t in zip(pred, tau, strict=True)])
        np.testing.assert_allclose(got_mean, want[:, 0], rtol=0, atol=2e-5, err_msg=f"mean, levels {levels}")
        np.testing.assert_allclose(got_var, want[:, 1], rtol=0, atol=2e-5, err_msg=f"variance, levels {levels}")

    # The predictive of S draws is their mixture: E = mean_s E_s, Var = var_s E_s + mean_s Var_s.
    levels = np.arange(1.0, 6.0)
    mus, taus = np.array([0.6, 2.2, 3.4, 5.3]), np.array([0.5, 3.0, 12.0, 1.5])  # pred = mu_s (no factors/biases)
    S, n = len(mus), 3
    zeros = jnp.zeros((S, n))
    draws = MFParams(zeros[..., None], zeros[..., None], zeros, zeros, jnp.asarray(mus, jnp.float32))
    post = Posterior(draws, jnp.asarray(taus, jnp.float32), jnp.asarray(levels, jnp.float32))
    mean, sd = (np.asarray(a, np.float64) for a in post.predictive(jnp.arange(n), jnp.arange(n)))
    per_draw = np.array([_rounded_reference(m, t, levels) for m, t in zip(mus, taus, strict=True)])
    np.testing.assert_allclose(mean, per_draw[:, 0].mean(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(sd**2, per_draw[:, 0].var() + per_draw[:, 1].mean(), rtol=0, atol=5e-5)


@pytest.mark.parametrize("linalg", ["lapack", "jax"])
def test_implicit_draws_are_the_exact_matrix_normal_posterior(linalg):
    """Rows T_i ~ N(A_i Y, P^-1), rows of Y ~ N(0, (c P)^-1): Y | T is matrix normal with
    mean (A^T A + c I)^-1 A^T T and cov(vec Y) = (A^T A + c I)^-1 (x) P^-1 (row-major vec)."""
    from probmf.fitters.gibbs import implicit_operator, sample_implicit

    rows = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6])
    cols = np.array([0, 2, 1, 0, 1, 3, 3, 2, 3, 0, 1, 2])
    n, C, d, c = 7, 4, 2, 0.7
    op = implicit_operator(rows, cols, n, C)
    T = np.random.default_rng(0).standard_normal((n, d))
    P = np.array([[2.0, 0.6], [0.6, 1.0]])
    draw = jax.jit(jax.vmap(lambda key: sample_implicit(key, jnp.asarray(T, jnp.float32), jnp.asarray(P, jnp.float32),
                                                        jnp.float32(c), op, linalg)))  # fmt: skip
    num = 40_000
    Y = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), num)), np.float64).reshape(num, C * d)
    A = np.zeros((n, C))
    A[rows, cols] = 1.0 / np.sqrt(np.bincount(rows)[rows])
    row_cov = np.linalg.inv(A.T @ A + c * np.eye(C))
    mean = (row_cov @ A.T @ T).ravel()
    cov = np.kron(row_cov, np.linalg.inv(P))
    se = np.sqrt(np.diag(cov) / num)
    np.testing.assert_array_less(np.abs(Y.mean(0) - mean), 5 * se)
    np.testing.assert_allclose(np.cov(Y.T), cov, atol=5 * np.sqrt(2.0 / num) * np.max(np.diag(cov)))


def _rated_by_taste(seed, num_users=160, num_items=120, per_user=40, noise=0.5):
    """Ratings from the biased MF model where users rate the items they like more often, so
    which items a user rated carries information about their factors."""
    from probmf.data.ratings import IdMap, Ratings

    rng = np.random.default_rng(seed)
    W, U = rng.normal(0, 0.8, (num_users, 2)), rng.normal(0, 0.8, (num_items, 2))
    users, items = [], []
    for i in range(num_users):
        p = np.exp(2.0 * U @ W[i])
        chosen = rng.choice(num_items, size=per_user, replace=False, p=p / p.sum())
        users += [i] * per_user
        items += list(chosen)
    users, items = np.array(users), np.array(items)
    values = 3.5 + np.sum(W[users] * U[items], 1) + noise * rng.standard_normal(users.size)
    return Ratings(users, items, values, IdMap.identity(num_users), IdMap.identity(num_items))


@pytest.mark.slow
def test_implicit_feedback_learns_from_which_items_were_rated():
    """When users rate what they like, the implicit model predicts held-out ratings better
    than plain BPMF on the same draws budget, and its 90% intervals stay calibrated."""
    ratings = _rated_by_taste(seed=0)
    test_mask = np.random.default_rng(1).random(len(ratings)) < 0.2
    train, test = ratings.take(~test_mask), ratings.take(test_mask)
    pairs = (jnp.asarray(test.users), jnp.asarray(test.items))
    scores = {}
    for implicit in (False, True):
        res = fit_gibbs(jax.random.PRNGKey(0), train, rank=2, num_warmup=100, num_samples=150, implicit=implicit)
        mean, sd = res.predictive(*pairs)
        scores[implicit] = {"rmse": float(np.sqrt(np.mean((np.asarray(mean) - test.values) ** 2))),
                            **interval_scores(mean, sd, test.values)}  # fmt: skip
    assert scores[True]["rmse"] < scores[False]["rmse"] - 0.005, scores
    assert 0.85 <= scores[True]["coverage_90"] <= 0.95, scores


def test_implicit_eigen_solver_refuses_sides_too_large_for_it():
    from probmf.data.ratings import IdMap, Ratings
    from probmf.fitters.gibbs import MAX_IMPLICIT_COLUMNS

    wide = Ratings(
        [0, 1, 1], [0, MAX_IMPLICIT_COLUMNS, 1], [3.0, 4.0, 2.0], IdMap.identity(2),
        IdMap.identity(MAX_IMPLICIT_COLUMNS + 1),
    )  # fmt: skip
    with pytest.raises(ValueError, match=f"at most {MAX_IMPLICIT_COLUMNS} users and items"):
        fit_gibbs(jax.random.PRNGKey(0), wide, rank=2, implicit=True, implicit_solver="eigen")


@pytest.mark.slow
def test_implicit_auto_solver_fits_sides_past_the_eigendecomposition_by_cg():
    from probmf.data.ratings import IdMap, Ratings
    from probmf.fitters.gibbs import MAX_IMPLICIT_COLUMNS

    wide = Ratings(
        [0, 1, 1], [0, MAX_IMPLICIT_COLUMNS, 1], [3.0, 4.0, 2.0], IdMap.identity(2),
        IdMap.identity(MAX_IMPLICIT_COLUMNS + 1),
    )  # fmt: skip
    res = fit_gibbs(jax.random.PRNGKey(0), wide, rank=2, num_warmup=2, num_samples=3, implicit=True)
    assert np.all(np.isfinite(np.asarray(res.predict(jnp.asarray([0, 1]), jnp.asarray([1, 0])))))


@pytest.mark.parametrize(
    "preset, side",
    [("tiny", 0)] + [pytest.param(*c, marks=pytest.mark.slow) for c in (("tiny", 1), ("ml100k", 0), ("ml100k", 1))],
)  # fmt: skip
def test_cg_draw_of_the_implicit_vectors_equals_the_exact_draw(preset, side):
    """With the same noise, the CG draw of Y (from the tiles, and from the nonzeros) equals the
    eigendecomposition's to within 1% of Y's posterior sd, entry by entry, at a small c (where
    F^T F + c I is hardest to solve), whatever the warm start; on tiny and ML-100K-shaped data."""
    from probmf.data.synthetic import synthetic_preset
    from probmf.fitters.gibbs import implicit_operators, sample_implicit

    train, _ = synthetic_preset(preset, seed=0)
    data = encode(train)
    num_rows = (train.num_users, train.num_items)[side]
    eigen = implicit_operators(train, "eigen")[side]
    rng = np.random.default_rng(side)
    d = 4
    B = rng.standard_normal((d, d))
    P = jnp.asarray(B @ B.T / d + np.eye(d), jnp.float32)
    T = jnp.asarray(0.3 * rng.standard_normal((num_rows, d)), jnp.float32)
    c = jnp.float32(0.5)
    key = jax.random.PRNGKey(side)
    draw = jax.jit(sample_implicit)
    exact = draw(key, T, P, c, eigen)
    row_var = (eigen.vecs**2) @ (1.0 / (eigen.vals + c))  # diag((F^T F + c I)^-1)
    sd = np.sqrt(np.asarray(row_var)[:, None] * np.diag(np.linalg.inv(np.asarray(P)))[None])
    x0 = jnp.asarray(rng.standard_normal(exact.shape), jnp.float32)
    for op in (implicit_operators(train, "cg", data)[side], implicit_operators(train, "cg")[side]):
        assert op.vecs is None
        for start in (None, x0):
            error = np.abs(np.asarray(draw(key, T, P, c, op, x0=start)) - np.asarray(exact)) / sd
            assert error.max() < 0.01, error.max()


@pytest.mark.parametrize("tiled", [True, False])
def test_the_cg_coarse_space_spans_the_top_of_the_scaled_gram_and_saves_iterations(tiled):
    """`coarse_space` on the users' F of ML-100K-shaped data: Z^T Z = I, Z^T G Z = diag(g)
    against the dense G = F^T F, and span(Z) holds D^-1/2 times the top two eigenvectors of
    D^-1/2 G D^-1/2 (D = diag G). `solve_cg` with it solves (G + c I) Y = B to the same
    tolerance as Jacobi alone, against the dense solve, in at most 3/4 of Jacobi's iterations
    at small c (where F^T F + c I is hardest to solve)."""
    from probmf.data.synthetic import synthetic_preset
    from probmf.fitters.gibbs import implicit_operators, solve_cg

    train, _ = synthetic_preset("ml100k", seed=0)
    op = implicit_operators(train, "cg", encode(train) if tiled else None)[0]
    F = np.zeros((train.num_users, train.num_items))
    F[train.users, train.items] = 1.0
    F /= np.sqrt(F.sum(1, keepdims=True))
    G = F.T @ F
    Z, GZ, g = (np.asarray(a, np.float64) for a in op.coarse)
    np.testing.assert_allclose(Z.T @ Z, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(GZ, G @ Z, atol=1e-4 * np.abs(G @ Z).max())
    np.testing.assert_allclose(Z.T @ G @ Z, np.diag(g), atol=1e-4 * g.max())
    s = 1.0 / np.sqrt(np.diag(G))
    top = s[:, None] * np.linalg.eigh(s[:, None] * G * s[None])[1][:, -2:]
    top /= np.linalg.norm(top, axis=0)
    assert np.linalg.norm(top - Z @ (Z.T @ top), axis=0).max() < 1e-3  # each within span(Z)
    c, B = 0.3, np.random.default_rng(0).standard_normal((train.num_items, 3))
    exact = np.linalg.solve(G + c * np.eye(train.num_items), B)
    solve = jax.jit(solve_cg, static_argnums=(3, 5))
    its = []
    for o in (op, op._replace(coarse=None)):
        Y, it = solve(o, jnp.float32(c), jnp.asarray(B, jnp.float32), train.num_users, jnp.zeros(B.shape), 1e-5)
        np.testing.assert_allclose(np.asarray(Y), exact, atol=1e-3 * np.abs(exact).max())
        its.append(int(it))
    assert its[0] <= 0.75 * its[1], its


def test_row_sums_are_the_incidence_matrix_product():
    """`row_sums` of either tile layout is S Z with S the 0/1 pattern of the ratings."""
    from probmf.data.synthetic import synthetic_preset
    from probmf.fitters.rows import row_sums

    train, _ = synthetic_preset("tiny")
    data = encode(train, Layout(tile_len=4, chunk_entries=16, block_rows=7))  # several blocks and chunks
    S = np.zeros((train.num_users, train.num_items))
    S[train.users, train.items] = 1.0
    rng = np.random.default_rng(0)
    Z_items, Z_users = rng.standard_normal((train.num_items, 3)), rng.standard_normal((train.num_users, 3))
    np.testing.assert_allclose(row_sums(data.by_user, jnp.asarray(Z_items, jnp.float32)), S @ Z_items, atol=1e-4)
    np.testing.assert_allclose(row_sums(data.by_item, jnp.asarray(Z_users, jnp.float32)), S.T @ Z_users, atol=1e-4)


def _prior_draws(rng, num, hyper, k, F_users, F_items, X_users=None, X_items=None):
    """``num`` independent draws of every parameter of the implicit-feedback model (with
    attribute matrices X: and side information) from its prior (numpy, leading axis ``num``):
    (W, b, U, c, tau, users' and items' hyper-parameters (Lam, mu, lam_b, c, Y, c_A, A), the
    last two None without X)."""
    from scipy.stats import wishart

    def gaussian(prec, shape):  # draws ~ N(0, prec^-1), prec (num, d, d), shape (num, ..., d)
        L = np.linalg.cholesky(prec)[:, None]  # x = L^-T z
        z = rng.standard_normal(shape)[..., None]
        return np.linalg.solve(np.swapaxes(L, -1, -2), z)[..., 0]

    def side(F, X):
        n, C = F.shape
        lam = wishart(df=k + hyper.nu0_extra, scale=np.eye(k)).rvs(size=num, random_state=rng).reshape(num, k, k)
        mu = gaussian(hyper.beta0 * lam, (num, 1, k))[:, 0]
        lam_b = rng.gamma(hyper.a_bias, 1.0 / hyper.b_bias, num)
        P = np.zeros((num, k + 1, k + 1))
        P[:, :k, :k], P[:, k, k] = lam, lam_b
        scale = rng.gamma(hyper.a_implicit, 1.0 / hyper.b_implicit, num)
        Y = gaussian(scale[:, None, None] * P, (num, C, k + 1))
        rows = np.concatenate([mu, np.zeros((num, 1))], 1)[:, None] + F @ Y + gaussian(P, (num, n, k + 1))
        scale_a = A = None
        if X is not None:
            scale_a = rng.gamma(hyper.a_features, 1.0 / hyper.b_features, num)
            A = gaussian(scale_a[:, None, None] * P, (num, X.shape[1], k + 1))
            rows = rows + X @ A
        return rows, (lam, mu, lam_b, scale, Y, scale_a, A)

    (Xw, hw), (Xu, hu) = side(F_users, X_users), side(F_items, X_items)
    tau = rng.gamma(hyper.a_tau, 1.0 / hyper.b_tau, num)
    return Xw[..., :k], Xw[..., k], Xu[..., :k], Xu[..., k], tau, hw, hu


def _prior_time(rng, num, hyper, num_users, num_items, num_bins):
    """``num`` prior draws of the time effects (numpy): (lam_bins, c_{j,b} (num, M, B),
    lam_drift, alpha (num, N))."""
    lam_bins = rng.gamma(hyper.a_time_bins, 1.0 / hyper.b_time_bins, num)
    lam_drift = rng.gamma(hyper.a_drift, 1.0 / hyper.b_drift, num)
    cb = rng.standard_normal((num, num_items, num_bins)) / np.sqrt(lam_bins)[:, None, None]
    return lam_bins, cb, lam_drift, rng.standard_normal((num, num_users)) / np.sqrt(lam_drift)[:, None]


def _stats(W, b, U, c, tau, hw, hu, implicit=True, features=False, time=None):
    """The scalar functions of the parameters compared between the two simulators (any
    leading axes); the implicit vectors and their scales only with ``implicit``, the
    attribute vectors and theirs only with ``features``, the time effects (lam_bins, c_{j,b},
    lam_drift, alpha) when given (c_{4,2}: a group without ratings)."""
    log = np.log if isinstance(tau, np.ndarray) else jnp.log
    out = [log(tau), log(hw[2]), log(hw[0][..., 0, 0]), hw[0][..., 0, 1], hw[1][..., 0], W[..., 0, 0], b[..., 0],
           log(hu[2]), U[..., 1, 1], c[..., 2]]  # fmt: skip
    if implicit:
        out += [log(hw[3]), hw[4][..., 0, 0], hw[4][..., 1, 2], log(hu[3]), hu[4][..., 0, 1]]
    if features:
        out += [log(hw[5]), hw[6][..., 0, 0], hw[6][..., 2, 2], hw[6][..., 1, 0], log(hu[5]), hu[6][..., 1, 1]]
    if time is not None:
        lam_bins, cb, lam_drift, alpha = time
        out += [log(lam_bins), cb[..., 0, 0], cb[..., 1, 1], cb[..., 4, 2], log(lam_drift), alpha[..., 0],
                alpha[..., 3]]  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "implicit, features, time, solver",
    [(False, False, False, "eigen"), (True, False, False, "eigen"), (True, True, False, "eigen"),
     (False, False, True, "eigen"), (True, True, True, "eigen"), (True, True, False, "cg")],
)  # fmt: skip
def test_sampler_passes_geweke_successive_conditional_test(implicit, features, time, solver):
    """Geweke (2004): alternately drawing ratings | parameters and one sweep of parameters |
    ratings (BPMF, with implicit feedback, with side information too, and with time effects)
    leaves the prior invariant, so every statistic's mean along that chain equals its prior
    mean; a wrong conditional anywhere in the sweep (a scale, a degree of freedom, a prior
    mean) moves some of them. Tight hyper-priors keep float32 away from heavy tails. ``solver``
    "cg": the implicit vectors drawn by conjugate gradients over the tiles
    (`probmf.fitters.gibbs.implicit`)."""
    import scipy.sparse as sp

    from probmf.data.ratings import IdMap, Ratings
    from probmf.fitters.gibbs import (
        FeatureSide,
        GibbsState,
        ImplicitSide,
        TimeData,
        TimeState,
        feature_operator,
        gibbs_sweep,
        implicit_operators,
        with_values,
    )
    from probmf.model import MFParams, predict
    from probmf.objectives import Hyperpriors

    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 1, 3, 5])
    items = np.array([0, 1, 3, 1, 2, 0, 2, 4, 3, 4, 0, 1, 4, 2, 3, 4, 0, 1])
    n_users, n_items, k = 6, 5, 2
    ratings = Ratings(users, items, np.zeros(users.size), IdMap.identity(n_users), IdMap.identity(n_items))
    # Precisions around 2.5-4, not 1, so that a wrong power (c for sqrt(c)) would show.
    hyper = Hyperpriors(beta0=2.0, nu0_extra=4.0, a_tau=10.0, b_tau=4.0, a_bias=10.0, b_bias=3.0,
                        a_implicit=10.0, b_implicit=2.5, a_features=8.0, b_features=3.0, a_time_bins=10.0,
                        b_time_bins=3.0, a_drift=8.0, b_drift=3.0)  # fmt: skip
    data = encode(ratings, with_slots=True)
    ops = implicit_operators(ratings, solver, data) if implicit else None
    F_users, F_items = np.zeros((n_users, n_items)), np.zeros((n_items, n_users))
    if implicit:  # else F = 0: the implicit vectors are drawn but never enter the model
        F_users[users, items] = 1.0 / np.sqrt(np.bincount(users)[users])
        F_items[items, users] = 1.0 / np.sqrt(np.bincount(items)[items])

    # Attributes: a zero row, one-hots and a numeric column.
    X_users = np.array([[1.0, 0, 0.5], [0, 1, -1.0], [0, 0, 0], [1, 0, 1.5], [0, 1, 0.2], [1, 0, -0.7]])
    X_items = np.array([[1.0, 0.3], [0, -1.2], [1, 0], [0, 0], [1, 0.8]])
    X = (X_users, X_items) if features else (None, None)
    fops = tuple(feature_operator(sp.csr_matrix(x)) for x in X) if features else None

    # Time: 3 bins (group (4, 2) has no rating), drifts of either sign, user 5's last one 0.
    bins = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2, 0])
    dev = np.random.default_rng(2).normal(0, 1.5, users.size)
    dev[-1] = 0.0
    prior_time = _prior_time(np.random.default_rng(3), 100_000, hyper, n_users, n_items, 3) if time else None
    stats = _stats(*_prior_draws(np.random.default_rng(0), 100_000, hyper, k, F_users, F_items, *X), implicit, features,
                   prior_time)  # fmt: skip
    prior = np.stack(stats, 1)

    W, b, U, c, tau, hw, hu = jax.tree.map(lambda a: a[0], _prior_draws(np.random.default_rng(1), 1, hyper, k,
                                                                          F_users, F_items, *X))  # fmt: skip
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    sides = (ImplicitSide(f32(hw[4]), f32(hw[3])), ImplicitSide(f32(hu[4]), f32(hu[3]))) if implicit else None
    feats = (FeatureSide(f32(hw[6]), f32(hw[5])), FeatureSide(f32(hu[6]), f32(hu[5]))) if features else None
    state = GibbsState(
        MFParams(f32(W), f32(U), f32(b), f32(c), jnp.float32(0.0)), f32(tau), f32(hw[1]), f32(hw[0]), f32(hu[1]),
        f32(hu[0]), f32(hw[2]), f32(hu[2]), sides, feats,
        TimeState(*(f32(t[j][0]) for t in [_prior_time(np.random.default_rng(4), 1, hyper, n_users, n_items, 3)]
                    for j in (1, 3, 0, 2)))  # (item_bins, drift, lam_bins, lam_drift)
        if time else None,
    )  # fmt: skip
    u, i = jnp.asarray(users), jnp.asarray(items)
    time_data = TimeData(u, i, jnp.asarray(bins), f32(dev), jnp.zeros(users.size)) if time else None

    @jax.jit
    def chain(state, data, key):
        def step(carry, s):
            state, data = carry
            key_y, key_sweep = jax.random.split(jax.random.fold_in(key, s))
            y = predict(state.params, u, i) + jax.random.normal(key_y, u.shape) / jnp.sqrt(state.tau)
            t, td = state.time, time_data
            if time:  # the ratings' time terms; the sweep reads y from the time data
                y = y + t.item_bins[i, td.bins] + t.drift[u] * td.dev
                td = td._replace(values=y)
            data = with_values(data, y)
            state, _ = gibbs_sweep(key_sweep, state, data, hyper, ops=ops, feature_ops=fops, time_data=td)
            (sw, su), p = state.implicit or (ImplicitSide(None, None),) * 2, state.params
            fw, fu = state.features or (FeatureSide(None, None),) * 2
            hw = (state.lam_w, state.mu_w, state.lam_b, sw.c, sw.Y, fw.c, fw.A)
            hu = (state.lam_u, state.mu_u, state.lam_c, su.c, su.Y, fu.c, fu.A)
            t = state.time
            t = None if t is None else (t.lam_bins, t.item_bins, t.lam_drift, t.drift)
            return (state, data), jnp.stack(_stats(p.W, p.b, p.U, p.c, state.tau, hw, hu, implicit, features, t))

        return lax.scan(step, (state, data), jnp.arange(20_000))[1]

    draws = np.asarray(chain(state, data, jax.random.PRNGKey(0)), np.float64)
    assert np.all(np.isfinite(draws))
    batches = draws.reshape(50, -1, draws.shape[1]).mean(1)  # batch means: the chain is autocorrelated
    se = np.sqrt(batches.var(0, ddof=1) / 50 + prior.var(0) / len(prior))
    z = (draws.mean(0) - prior.mean(0)) / se
    assert np.all(np.abs(z) < 4.5), np.round(z, 2)


@pytest.mark.slow
def test_several_chains_are_independent_pooled_and_diagnosed_between_chains(small):
    """Three chains: chain 0 follows the single chain's keys (up to float rounding of the
    vectorised sweep), the others differ from it; the result pools the draws chain-major, the
    pooled running summary equals the pooled draws' predictive, and R-hat reads 3 chains."""
    from probmf.diagnostics import prediction_diagnostics

    users, items = jnp.asarray(small.users[:40]), jnp.asarray(small.items[:40])
    options = {"rank": 2, "num_warmup": 4, "num_samples": 6}
    one = fit_gibbs(jax.random.PRNGKey(0), small, **options)
    three = fit_gibbs(jax.random.PRNGKey(0), small, **options, num_chains=3, predict_pairs=(users, items))
    assert three.num_chains == 3 and three.posterior.num_samples == 18 and three.trace.tau.shape == (3, 10)
    W1 = np.asarray(one.posterior.draws.W)
    W3 = np.asarray(three.posterior.draws.W).reshape(3, 6, *W1.shape[1:])
    np.testing.assert_allclose(W3[0], W1, atol=1e-5)
    assert np.abs(W3[1] - W3[0]).max() > 0.1 and np.abs(W3[2] - W3[1]).max() > 0.1
    for a, b in zip(three.summary.predictive(users, items), three.posterior.predictive(users, items), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    r_hat, _ = prediction_diagnostics(three.posterior, users, items, num_chains=three.num_chains)
    assert r_hat.shape == (40,)


def test_pooled_moments_are_the_moments_of_all_the_draws():
    from probmf.fitters.gibbs.chain import pooled_moments
    from probmf.posterior import moments_init, moments_update

    rng = np.random.default_rng(0)
    draws = [rng.normal(loc, 1.0, (n, 5)) for loc, n in ((0.0, 7), (2.0, 3), (-1.0, 11))]
    noise = [rng.random(n) for n in (7, 3, 11)]
    per_chain = []
    for x, v in zip(draws, noise, strict=True):
        m = moments_init(5)
        for row, nv in zip(x, v, strict=True):
            m = moments_update(m, jnp.asarray(row, jnp.float32), jnp.float32(nv))
        per_chain.append(m)
    count, mean, m2, total_noise = pooled_moments(jax.tree.map(lambda *a: jnp.stack(a), *per_chain))
    every = np.concatenate(draws)
    assert float(count) == len(every)
    np.testing.assert_allclose(mean, every.mean(0), atol=1e-5)
    np.testing.assert_allclose(m2, ((every - every.mean(0)) ** 2).sum(0), rtol=1e-4)
    np.testing.assert_allclose(total_noise, np.concatenate(noise).sum(), rtol=1e-5)


def test_several_chains_refuse_several_devices(small):
    with pytest.raises(ValueError, match="one device"):
        fit_gibbs(jax.random.PRNGKey(0), small, rank=2, num_chains=2, devices=2)
    with pytest.raises(ValueError, match="num_chains must be an integer >= 1"):
        fit_gibbs(jax.random.PRNGKey(0), small, rank=2, num_chains=0)
