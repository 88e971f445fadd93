"""`probmf.Recommender`, `probmf.cross_validate` and `probmf.fit` on raw ids and DataFrames:
the issue's example end to end, raw ids never confused with dense indices, DataFrames
checked as ratings files are, unknown ids flagged, save/load, cross-validation folds."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import probmf
from probmf.data.io import RatingsFileError
from probmf.data.movielens import load_split
from probmf.data.splits import kfold
from probmf.data.synthetic import synthetic_ratings
from probmf.evaluate import evaluate_fold
from probmf.metrics import plugin_sd
from probmf.model import predict_with_fallback


@pytest.fixture(scope="module")
def frames():
    """(train, test) DataFrames of raw ids (users 1000.., items 'i0'..), and the new user."""
    ratings, _ = synthetic_ratings(num_users=80, num_items=50, num_ratings=1500, rank=2, noise=0.4, seed=5)
    df = pd.DataFrame({
        "user_id": ratings.users.astype(np.int64) + 1000,
        "item_id": np.char.add("i", ratings.items.astype(str)),
        "rating": np.clip(ratings.values, 1, 5),
    })  # fmt: skip
    test = np.random.default_rng(1).random(len(df)) < 0.2
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


def _example(model, train_df, test_df, users, new_user, path, **options):
    """The estimator example of the README and issue, returning what each step gave."""
    m = probmf.Recommender(model, seed=0, **options).fit(train_df)
    pred = m.predict(test_df)
    top = m.recommend(users, n=10)
    new = m.fold_in(new_user)
    m.save(path)
    m2 = probmf.Recommender.load(path)
    return m, pred, top, new, m2


def test_the_example_on_synthetic_data(frames, tmp_path):
    train, test = frames
    users = [1003, 1007, 999999]  # the last is unknown
    new_user = train[train.user_id == 1003][["item_id", "rating"]]
    m, pred, top, new, m2 = _example("gibbs", train, test, users, new_user, tmp_path / "m", rank=2, num_warmup=10,
                                     num_samples=30)  # fmt: skip
    assert list(pred.columns) == ["user", "item", "mean", "sd", "known"]
    np.testing.assert_array_equal(pred["user"], test["user_id"])  # raw ids in, raw ids out
    np.testing.assert_array_equal(pred["item"], test["item_id"])
    assert np.sqrt(np.mean((pred["mean"] - test["rating"]) ** 2)) < np.std(test["rating"])
    assert (pred["sd"] > 0).all()

    assert list(top.columns) == ["user", "rank", "item", "score", "mean", "sd", "known"]
    assert top.groupby("user").size().to_dict() == {u: 10 for u in users}
    assert not top[top.user == 999999]["known"].any() and top[top.user == 1003]["known"].all()
    for u in (1003, 1007):  # a user's training items are not recommended, best first
        mine = top[top.user == u]
        assert not set(mine["item"]) & set(train[train.user_id == u]["item_id"])
        assert (np.diff(mine["score"]) <= 0).all() and list(mine["rank"]) == list(range(1, 11))

    assert len(new) == 10 and not set(new["item"]) & set(new_user["item_id"])
    pd.testing.assert_frame_equal(m2.predict(test), pred)


def test_raw_ids_are_never_read_as_dense_indices(frames):
    """A point fit's prediction for raw (user, item) is the dense API's at those ids' indices,
    not at the indices equal to the raw numbers."""
    train, test = frames
    m = probmf.Recommender("als", rank=2, seed=0).fit(train)
    model = m.model_
    raw_u, raw_i = test["user_id"].to_numpy()[:20], test["item_id"].to_numpy()[:20]
    u, i = model.user_ids.index(raw_u), model.item_ids.index(raw_i)
    expect = np.clip(np.asarray(predict_with_fallback(model.fitted.params, jnp.asarray(u), jnp.asarray(i))), 1, 5)
    np.testing.assert_allclose(m.predict(raw_u, raw_i)["mean"], expect, rtol=1e-6)
    # The plug-in sd is the RMS training residual, the one `probmf evaluate` scores.
    train_ratings = probmf.read_dataframe(train)
    expect_sd = plugin_sd(model.fitted, train_ratings, model.rating_range)
    assert m.predict(raw_u, raw_i)["sd"].iloc[0] == pytest.approx(expect_sd)


def test_unknown_ids_get_the_fallback_and_known_false(frames):
    train, _ = frames
    m = probmf.Recommender("als", rank=2, seed=0).fit(train)
    got = m.predict(pd.DataFrame({"user": [1003, 424242, 424242], "item": ["nope", "i3", "nope"]}))
    assert not got["known"].any()
    fitted = m.model_.fitted.params
    i3 = int(m.model_.item_ids.index(np.array(["i3"]))[0])
    assert got["mean"][1] == pytest.approx(float(np.clip(fitted.mu + fitted.c[i3], 1, 5)), rel=1e-6)
    assert got["mean"][2] == pytest.approx(float(np.clip(fitted.mu, 1, 5)), rel=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.drop(columns="rating"), "no rating column"),
        (lambda d: d.assign(userId=d.user_id), "columns ['user_id', 'userId'] all look like the user column"),
        (lambda d: d.assign(rating=d.rating.where(d.index != 7)), "row 7, column 'rating': missing rating"),
        (lambda d: d.assign(rating=d.rating.where(d.index != 3, np.inf)), "row 3, column 'rating': rating inf is not"),
        (lambda d: d.assign(rating=d.rating.where(d.index != 5, 6.0)), "row 5, column 'rating': rating 6.0 is outside"),
        (lambda d: pd.concat([d, d.iloc[[2]]], ignore_index=True), "duplicate rating for user"),
        (lambda d: d.assign(user_id=d.user_id.where(d.index != 4, -3)), "row 4, column 'user_id': user id -3 is neg"),
    ],
)
def test_a_bad_dataframe_is_refused_before_fitting(frames, change, message, monkeypatch):
    train, _ = frames
    monkeypatch.setitem(probmf.FITTERS, "als", lambda *a, **k: pytest.fail("fitted a bad DataFrame"))
    with pytest.raises((ValueError, RatingsFileError), match=message.replace("[", r"\[").replace("]", r"\]")):
        probmf.Recommender("als", rating_scale=(1, 5)).fit(change(train))


def test_bad_options_fail_when_the_estimator_is_made():
    with pytest.raises(ValueError, match="option 'num_sweps' does not apply to model 'als'"):
        probmf.Recommender("als", num_sweps=3)
    with pytest.raises(ValueError, match="unknown model 'alss'"):
        probmf.Recommender("alss")
    with pytest.raises(RuntimeError, match="not fitted yet"):
        probmf.Recommender("als").predict([1], [2])


@pytest.mark.slow
def test_cross_validate_scores_each_fold_as_evaluate_does(frames):
    train, _ = frames
    ratings = probmf.read_dataframe(train)
    table = probmf.cross_validate("als", train, folds=3, seed=4, rank=2, num_sweeps=5)
    assert list(table["fold"]) == [1, 2, 3] and table["n_test"].sum() == len(ratings)
    second = kfold(ratings, 3, seed=4)[1]
    row = evaluate_fold("als", *second, options={"rank": 2, "num_sweeps": 5}, seed=4)
    assert table["rmse"][1] == pytest.approx(row["rmse"], rel=1e-6)


@pytest.mark.slow
def test_fit_gives_one_predictor_shape():
    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=400, rank=2, seed=2)
    point = probmf.fit("als", ratings, rank=2, num_sweeps=3)
    posterior = probmf.fit("gibbs", ratings, rank=2, num_warmup=3, num_samples=5)
    for result in (point, posterior):
        mean, sd = result.predictor.predictive(jnp.array([0, -1]), jnp.array([1, 1]))
        assert mean.shape == sd.shape == (2,) and np.all(np.asarray(sd) > 0)
    assert point.config["num_sweeps"] == 3 and point.info.params is point.predictor.fitted
    assert posterior.predictor is posterior.info


def test_the_example_on_movielens_u1(ml100k_dir, tmp_path, monkeypatch):
    """The example on ML-100K u1, as a user would write it: the raw-id answer for user 196,
    item 242 is the model's at those ids (3.8-ish), not at dense indices 196, 242."""
    monkeypatch.setenv("PROBMF_DATA_DIR", str(ml100k_dir.parent))
    train, test = load_split("ml-100k", "u1")
    train_df = train.to_dataframe()
    test = test.take(np.flatnonzero(test.known)[:500])
    test_df = pd.DataFrame({"userId": test.raw_users(), "movieId": test.raw_items()})
    m, pred, top, new, m2 = _example("als", train_df, test_df, [196, 1], {1: 5.0, 50: 4.0, 100: 3.0}, tmp_path / "m")
    truth = test.values
    assert np.sqrt(np.mean((pred["mean"] - truth) ** 2)) < 1.0
    assert top.groupby("user").size().to_dict() == {196: 10, 1: 10}
    one = m.predict([196], [242])
    u, i = m.model_.user_ids.index(np.array([196])), m.model_.item_ids.index(np.array([242]))
    fitted = m.model_.fitted.params
    np.testing.assert_allclose(
        one["mean"], np.clip(predict_with_fallback(fitted, jnp.asarray(u), jnp.asarray(i)), 1, 5)
    )
    assert len(new) == 10
    pd.testing.assert_frame_equal(m2.predict(test_df), pred)
