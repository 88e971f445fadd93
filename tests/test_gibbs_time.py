"""Time effects in the Gibbs sampler (`probmf.fitters.gibbs.temporal`): the time block's scalar
draws against their conjugate conditionals, the clock that maps timestamps to bins and drifts,
planted time effects recovered, prediction with and without the pairs' times, and the options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from probmf.data.ratings import IdMap, Ratings
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.gibbs import TimeData, TimeState, fit_gibbs, sample_time, training_clock
from probmf.objectives import Hyperpriors
from probmf.posterior import TIME_BETA, TimeEffects, clock_inputs, time_offset

DAY = 86_400


def _ratings(users, items, values, days, num_users, num_items, source="r.csv"):
    return Ratings(np.asarray(users), np.asarray(items), np.asarray(values, np.float32), IdMap.identity(num_users),
                   IdMap.identity(num_items), None if days is None else (np.asarray(days) * DAY).astype(np.int64),
                   source)  # fmt: skip


def test_the_clock_bins_the_training_range_and_measures_each_users_drift():
    """Equal-width bins over the training days, times outside them in the end bins; dev =
    sign(t - t_i) |t - t_i|^0.4 around the user's mean training day; 0 for an unknown user
    or one without training ratings; no times: the last bin and dev 0."""
    train = _ratings([0, 0, 1, 1, 1], [0, 1, 0, 1, 2], [3, 4, 5, 1, 2], [10, 20, 30, 40, 110], 3, 3)
    clock = training_clock(train, 4)  # days 10..110: bins of 25 days
    assert float(clock.start) == 10.0 and float(clock.width) == 25.0 and clock.num_bins == 4
    np.testing.assert_allclose(np.asarray(clock.user_day)[:2], [5.0, 50.0])  # means of (0, 10), (20, 30, 100)
    assert np.isnan(np.asarray(clock.user_day)[2])
    users = np.array([0, 1, 1, 2, -1, 0])
    days = np.array([0.0, 60.0, 200.0, 50.0, 50.0, 34.9999])
    bins, dev = clock_inputs(clock, users, days * DAY)
    np.testing.assert_array_equal(bins, [0, 2, 3, 1, 1, 0])
    gap = np.array([-15.0, 0.0, 140.0, 0, 0, 19.9999])
    np.testing.assert_allclose(dev, np.sign(gap) * np.abs(gap) ** TIME_BETA, rtol=1e-5)
    bins, dev = clock_inputs(clock, users)
    assert np.all(bins == 3) and np.all(dev == 0)


def test_ratings_without_timestamps_are_refused_naming_the_file():
    train = _ratings([0, 1], [0, 1], [3, 4], None, 2, 2, source="my/ratings.csv")
    with pytest.raises(ValueError, match="my/ratings.csv has no timestamps"):
        fit_gibbs(jax.random.PRNGKey(0), train, rank=2, num_warmup=1, num_samples=1, time=True)
    with pytest.raises(ValueError, match="time_bins must be an integer >= 1"):
        fit_gibbs(jax.random.PRNGKey(0), train, rank=2, time=True, time_bins=0)


def test_each_time_draw_is_its_exact_conjugate_conditional():
    """Given base residuals e, tau and the old (alpha, lam_bins, lam_drift):
    c_{j,b} ~ N(tau sum (e - alpha dev) / p, 1/p), p = tau n_g + lam_bins; then alpha_i | the
    new c ~ N(tau sum dev (e - c) / p, 1/p), p = tau sum dev^2 + lam_drift; lam_bins | the c
    of groups with ratings ~ Gamma(a + G/2, b + sum c^2 / 2) and an empty group's c | lam_bins
    ~ N(0, 1/lam_bins); lam_drift likewise. Computed directly in numpy per draw: whitened,
    every c and alpha is N(0, 1); the precisions' conditional CDFs are uniform. 20k draws."""
    rng = np.random.default_rng(0)
    N, M, B, n = 4, 3, 2, 14
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1, 2, 3])
    items = np.array([0, 1, 2, 0, 1, 0, 2, 1, 0, 0, 0, 2, 1, 1])
    bins = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0])  # group (1, 1) has no rating
    dev = rng.normal(0, 2.0, n)
    dev[13] = 0.0  # user 3: one rating, no drift information
    base = rng.normal(0, 1.0, n)
    tau = 2.5
    drift0 = rng.normal(0, 0.5, N)
    state = TimeState(jnp.zeros((M, B)), jnp.asarray(drift0, jnp.float32), jnp.float32(3.0), jnp.float32(2.0))
    data = TimeData(*(jnp.asarray(a) for a in (users, items, bins)), jnp.asarray(dev, jnp.float32), jnp.zeros(n))
    h = Hyperpriors(a_time_bins=2.0, b_time_bins=0.7, a_drift=3.0, b_drift=1.5)

    def draw(key):
        return sample_time(key, state, jnp.asarray(base, jnp.float32), data, tau, h)

    num = 20_000
    out = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(1), num))
    cb, alpha, lam_b, lam_d = (np.asarray(a, np.float64) for a in out)
    group = items * B + bins
    counts = np.bincount(group, minlength=M * B)
    informed = counts > 0
    # c | old alpha: one conditional for every draw
    p = tau * counts + 3.0
    m = tau * np.bincount(group, base - drift0[users] * dev, M * B) / p
    flat = cb.reshape(num, -1)
    z_c = (flat[:, informed] - m[informed]) * np.sqrt(p[informed])
    z_empty = flat[:, ~informed] * np.sqrt(lam_b)[:, None]
    # alpha | this draw's c
    info = tau * np.bincount(users, dev * dev, N)
    resid = base - flat[:, group]
    p_a = info + 2.0
    m_a = tau * ((resid * dev) @ np.eye(N)[users]) / p_a
    z_a = (alpha[:, info > 0] - m_a[:, info > 0]) * np.sqrt(p_a[info > 0])
    z_a_empty = alpha[:, info == 0] * np.sqrt(lam_d)[:, None]
    for name, z in (("c", z_c), ("c empty", z_empty), ("alpha", z_a), ("alpha empty", z_a_empty)):
        assert np.all(np.abs(z.mean(0)) * np.sqrt(num) < 4.5), (name, z.mean(0))
        np.testing.assert_allclose(z.var(0), 1.0, atol=4.5 * np.sqrt(2.0 / num), err_msg=name)
    u_b = stats.gamma.cdf(lam_b, h.a_time_bins + informed.sum() / 2, scale=1 / (h.b_time_bins + 0.5 *
                          np.sum(flat[:, informed] ** 2, 1)))  # fmt: skip
    u_d = stats.gamma.cdf(lam_d, h.a_drift + (info > 0).sum() / 2, scale=1 / (h.b_drift + 0.5 *
                          np.sum(alpha[:, info > 0] ** 2, 1)))  # fmt: skip
    for name, u in (("lam_bins", u_b), ("lam_drift", u_d)):
        assert stats.kstest(u, "uniform").pvalue > 1e-3, name


def test_time_offsets_and_their_variance_for_known_and_unknown_ids():
    effects = TimeEffects(jnp.array([[0.1, 0.2], [0.3, -0.4]]), jnp.array([0.5, -1.0]), jnp.float32(0.25))
    users, items = jnp.array([0, 1, -1, 1]), jnp.array([1, 0, 0, -1])
    bins, dev = jnp.array([1, 0, 1, 0]), jnp.array([2.0, 1.5, 3.0, 1.0])
    offset, var = time_offset(effects, users, items, bins, dev)
    np.testing.assert_allclose(np.asarray(offset), [-0.4 + 1.0, 0.1 - 1.5, 0.2, -1.0])
    np.testing.assert_allclose(np.asarray(var), [0, 0, 0, 0.25])


def _planted(seed=0, num_users=200, num_items=60, num_ratings=8000, num_bins=6):
    """Synthetic ratings plus planted time effects: a per-(item, bin) bias of sd 0.6 and a
    per-user drift of sd 0.15 (times dev, |dev| up to ~ 7): (ratings, c_{j,b}, alpha)."""
    ratings, _ = synthetic_ratings(num_users=num_users, num_items=num_items, num_ratings=num_ratings, rank=2,
                                   noise=0.3, seed=seed)  # fmt: skip
    rng = np.random.default_rng(seed + 1)
    cb, alpha = rng.normal(0, 0.6, (num_items, num_bins)), rng.normal(0, 0.15, num_users)
    bins, dev = clock_inputs(training_clock(ratings, num_bins), ratings.users, ratings.timestamps)
    values = ratings.values + cb[ratings.items, bins] + alpha[ratings.users] * dev
    return _ratings(ratings.users, ratings.items, values, ratings.timestamps / DAY, num_users, num_items), cb, alpha


@pytest.mark.slow
def test_planted_time_effects_are_recovered_and_predicted_at_the_pairs_times():
    """On ratings drawn with item-by-bin biases and user drifts, `time=True` recovers both
    (posterior means correlate with the planted values) and predicts held-out ratings far
    better at their times than without them, or than the time-free model; its 90% intervals
    stay calibrated. (The test ratings are inside the training range, so their bins match.)"""
    ratings, cb, alpha = _planted()
    test = np.random.default_rng(3).random(len(ratings)) < 0.2
    train, held = ratings.take(~test), ratings.take(test)
    opts = dict(rank=2, num_warmup=150, num_samples=150, time_bins=6)
    res = fit_gibbs(jax.random.PRNGKey(0), train, time=True, **opts)
    plain = fit_gibbs(jax.random.PRNGKey(0), train, **opts)

    def rmse(mean):
        return float(np.sqrt(np.mean((np.asarray(mean) - held.values) ** 2)))

    mean, sd = res.predictive(held.users, held.items, times=held.timestamps)
    scores = {"timed": rmse(mean), "now": rmse(res.predict(held.users, held.items)),
              "plain": rmse(plain.predict(held.users, held.items))}  # fmt: skip
    assert scores["timed"] < scores["plain"] - 0.15 and scores["timed"] < scores["now"] - 0.15, scores
    coverage = float(np.mean(np.abs(np.asarray(mean) - held.values) <= 1.645 * np.asarray(sd)))
    assert 0.85 <= coverage <= 0.95, coverage
    # c_j + c_{j,b} is what the data identify (c_j and the bins' mean trade off): compare centred
    post = np.asarray(res.posterior.time.item_bins).mean(0)
    centred = lambda a: a - a.mean(1, keepdims=True)  # noqa: E731
    assert np.corrcoef(centred(post).ravel(), centred(cb).ravel())[0, 1] > 0.9
    assert np.corrcoef(np.asarray(res.posterior.time.drift).mean(0), alpha)[0, 1] > 0.7


@pytest.mark.slow
def test_prediction_with_times_and_the_summary_only_path_agree_with_the_draws(tmp_path):
    """times=None is "now": each draw's last bin and no drift; times= gives each pair its
    bin and drift (checked against a direct computation from the draws); a summary-only run
    given the pairs' times at fit time keeps the same predictive; `score` passes the test
    ratings' timestamps to a time model; a save and load keeps the time effects."""
    from probmf.evaluate import score
    from probmf.persistence import FittedModel, load_model, save_model

    ratings, _, _ = _planted(num_users=40, num_items=20, num_ratings=600)
    test = np.random.default_rng(0).random(len(ratings)) < 0.2
    train, held = ratings.take(~test), ratings.take(test)
    pairs, times = (held.users, held.items), held.timestamps
    key, opts = jax.random.PRNGKey(1), dict(rank=2, num_warmup=5, num_samples=6, time=True, time_bins=5)
    res = fit_gibbs(key, train, **opts)
    post = res.posterior
    now_mean, now_sd = (np.asarray(a) for a in res.predictive(*pairs))
    mean, sd = (np.asarray(a) for a in res.predictive(*pairs, times=times))
    bare = post._replace(time=None, clock=None)
    base_mean = np.asarray(bare.predictive(*pairs)[0])
    cb, drift = np.asarray(post.time.item_bins), np.asarray(post.time.drift)
    np.testing.assert_allclose(now_mean, base_mean + cb[:, held.items, -1].mean(0), rtol=1e-5, atol=1e-5)
    bins, dev = clock_inputs(post.clock, held.users, times)
    np.testing.assert_allclose(mean, base_mean + (cb[:, held.items, bins] + drift[:, held.users] * dev).mean(0),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert np.max(np.abs(mean - now_mean)) > 0.1

    summary = fit_gibbs(key, train, keep_draws=False, predict_pairs=pairs, predict_times=times, **opts)
    np.testing.assert_allclose(np.asarray(summary.predictive(*pairs)), np.asarray((mean, sd)), rtol=1e-5, atol=1e-5)
    row = score(res, train, held, clip=False)
    assert row["rmse"] == pytest.approx(float(np.sqrt(np.mean((mean - held.values) ** 2))), rel=1e-5)

    save_model(tmp_path / "m", FittedModel.from_training("gibbs", {"time": True}, res, train))
    loaded = load_model(tmp_path / "m").fitted
    np.testing.assert_array_equal(np.asarray(loaded.predictive(*pairs, times=times)), np.asarray((mean, sd)))


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(likelihood="rounded", implicit=True)])
def test_time_runs_with_the_rounded_likelihood_and_implicit_feedback(kwargs):
    ratings, _ = synthetic_ratings(num_users=40, num_items=20, num_ratings=500, round_to_half_stars=True,
                                   clip=(0.5, 5.0), seed=2)  # fmt: skip
    res = fit_gibbs(jax.random.PRNGKey(0), ratings, rank=2, num_warmup=4, num_samples=4, time=True, **kwargs)
    mean, sd = res.predictive(ratings.users[:20], ratings.items[:20], times=ratings.timestamps[:20])
    assert np.all(np.isfinite(np.asarray(mean))) and np.all(np.asarray(sd) > 0)
    assert np.all((np.asarray(mean) >= 0.5) & (np.asarray(mean) <= 5.0))


def test_the_cli_takes_features_time_and_refuses_a_file_without_timestamps(tmp_path, capsys):
    """``--features time`` is ``time=True`` (with user/item too); a ratings file without a
    timestamp column is refused before sampling, naming the file."""
    from probmf.cli import _feature_sides, main

    assert _feature_sides("user,time") == ("user", "time")
    for name in ("train", "test"):
        (tmp_path / f"{name}.csv").write_text("userId,movieId,rating\n1,1,4\n1,2,3\n2,1,5\n2,2,2\n")
    args = ["evaluate", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--model",
            "gibbs", "--rank", "2", "--features", "time", "--time-bins", "4"]  # fmt: skip
    assert main(args) == 2
    assert f"{tmp_path / 'train.csv'} has no timestamps" in capsys.readouterr().err


def test_the_rounded_likelihoods_latent_draw_centres_on_the_prediction_with_the_time_terms():
    """latent_values with offsets o draws y ~ N(r_hat + o, 1/tau) truncated: with o constant
    it is the same draw as with mu + o (same key), and without o as before."""
    from probmf.fitters.gibbs import Latent
    from probmf.fitters.gibbs.rounded import latent_values
    from probmf.model import MFParams

    rng = np.random.default_rng(0)
    parts = (rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=3), rng.normal(size=4), 3.0)
    params = MFParams(*(jnp.asarray(a, jnp.float32) for a in parts))
    latent = Latent(jnp.array([0, 1, 2, 2]), jnp.array([0, 3, 1, 2]), jnp.array([-jnp.inf, 2.5, 3.5, 4.5]),
                    jnp.array([1.5, 3.5, 4.5, jnp.inf]))  # fmt: skip
    key = jax.random.PRNGKey(0)
    shifted = latent_values(key, params._replace(mu=jnp.float32(3.7)), 2.0, latent)
    np.testing.assert_allclose(np.asarray(latent_values(key, params, 2.0, latent, jnp.full(4, 0.7))),
                               np.asarray(shifted), rtol=1e-6)  # fmt: skip
    assert not np.allclose(np.asarray(latent_values(key, params, 2.0, latent)), np.asarray(shifted))


@pytest.mark.slow
def test_every_walk_over_the_draws_carries_the_time_terms():
    """The per-draw predictions that R-hat and ESS, the ArviZ export and Thompson sampling use
    average to the predictive mean, at the pairs' times or "now": none drops the time terms."""
    from probmf.diagnostics import prediction_draws
    from probmf.inference_data import _per_draw
    from probmf.persistence import FittedModel
    from probmf.recommend import _draw_index, score_user

    ratings, _, _ = _planted(num_users=30, num_items=15, num_ratings=400)
    res = fit_gibbs(jax.random.PRNGKey(2), ratings, rank=2, num_warmup=3, num_samples=4, time=True, time_bins=4)
    post = res.posterior
    users, items, times = ratings.users[:50], ratings.items[:50], ratings.timestamps[:50]
    for at in (times, None):
        mean = np.asarray(post.predict(users, items, times=at))
        draws = prediction_draws(post, users, items, times=at)
        np.testing.assert_allclose(draws.mean(axis=(0, 1)), mean, rtol=1e-5, atol=1e-5)
        per_draw = _per_draw(jax.random.PRNGKey(0), post, users, items, None, at)[0]
        np.testing.assert_allclose(per_draw.mean(0), mean, rtol=1e-5, atol=1e-5)
    model = FittedModel.from_training("gibbs", {"time": True}, res, ratings)
    now = prediction_draws(post, np.zeros(15, np.int32), np.arange(15))[0]  # user 0, every item, "now"
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_allclose(score_user(model, 0, rng_key=key)[2], now[_draw_index(key, 4)], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_estimator_and_probmf_predict_take_the_pairs_timestamps(tmp_path, capsys):
    """`Recommender.predict` reads a DataFrame's timestamp column and ``probmf predict`` a pairs
    file's: each pair is predicted at its time, as the posterior's ``predictive(times=)`` says,
    and without one "now"; a bad timestamp is refused naming its line."""
    import json

    import probmf
    from probmf.cli import main
    from probmf.data.ratings import UNKNOWN

    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=400, rank=2, noise=0.5, seed=3)
    df = ratings.to_dataframe()
    rec = probmf.Recommender("gibbs", time=True, rank=2, num_warmup=5, num_samples=6, init_sweeps=2).fit(df)
    pairs = df.head(8)
    post = rec.model_.fitted.posterior
    users = rec.model_.user_ids.index(pairs["userId"].to_numpy())
    items = rec.model_.item_ids.index(pairs["movieId"].to_numpy())
    assert np.all(users != UNKNOWN) and np.all(items != UNKNOWN)
    want, want_sd = (np.asarray(a) for a in post.predictive(users, items, pairs["timestamp"].to_numpy()))
    got = rec.predict(pairs, clip=False)
    np.testing.assert_allclose(got["mean"], want, rtol=1e-6)
    np.testing.assert_allclose(got["sd"], want_sd, rtol=1e-6)
    now = rec.predict(pairs[["userId", "movieId"]], clip=False)
    np.testing.assert_allclose(now["mean"], np.asarray(post.predict(users, items)), rtol=1e-6)
    assert np.max(np.abs(now["mean"] - got["mean"])) > 1e-4  # the times matter

    out = tmp_path / "model"
    rec.save(out)
    path = tmp_path / "pairs.csv"
    pairs[["userId", "movieId", "timestamp"]].to_csv(path, index=False)
    assert main(["predict", "--model", str(out), "--pairs", str(path), "--no-clip", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["prediction"] for r in rows], want, atol=1e-4)
    path.write_text("userId,movieId,timestamp\n1,2,964982703\n1,3,soon\n")
    assert main(["predict", "--model", str(out), "--pairs", str(path)]) == 2
    assert "pairs.csv, line 3: timestamp 'soon' is not a finite number" in capsys.readouterr().err
