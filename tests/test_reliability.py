"""Reliability audit: bad input files, unknown ids, out-of-range hyper-parameters, numerical
faults and downloads, case by case. docs/RELIABILITY.md lists every case with its test."""

import contextlib
import dataclasses
import functools
import hashlib
import math
import urllib.error
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fitters_contract import QUICK

from probmf.cli import main
from probmf.data import (
    DatasetNotFoundError,
    IdMap,
    Ratings,
    RatingsFileError,
    kfold,
    load_movielens,
    load_titles,
    per_user_split,
    random_split,
    read_ratings,
)
from probmf.data import movielens as ml
from probmf.data.io import read_new_user, read_pairs
from probmf.data.synthetic import synthetic_ratings
from probmf.encoding import layout_for_rank, row_tiles
from probmf.fitters import FITTERS, fit_als, fit_baseline, fit_optax
from probmf.fitters.rows import normal_equations
from probmf.fitters.run import fit_model
from probmf.metrics import predict_ratings, rmse
from probmf.model import predict_with_fallback

KEY = jax.random.PRNGKey(0)


def _write(tmp_path, name, data) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ---- bad input files: each a RatingsFileError naming the file, the line and the value -----

BAD_FILES = [
    # (case, file content, read_ratings options, line, value or None, message fragment)
    ("wrong delimiter given", "1\t2\t3\n4\t5\t1\n", {"sep": ","}, 1, "1\t2\t3", "expected at least 3 fields"),
    ("delimiter changes mid-file", "1,2,3\n4;5;1\n", {}, 2, "4;5;1", "user id '4;5;1' is not an integer"),
    ("one field per line", "12345\n67890\n", {}, 1, "12345", "expected at least 3 fields"),
    ("unclosed quote", '1,"2,3\n4,5,6\n', {}, 1, None, "expected at least 3 fields"),
    ("quoted field over a line end", '1,2,"3\n4",5\n6,7,8\n', {}, 2, '4",5', "expected 3 fields separated by ','"),
    ("header=True on a data line", "1,2,3\n4,5,1\n", {"header": True}, 1, "1,2,3", "header=True, but this line"),
    ("header=False on a header", "userId,movieId,rating\n1,2,3\n", {"header": False}, 1, "rating", "not a number"),
    ("UTF-16 file (BOM FF FE)", "userId,movieId,rating\n1,2,3\n".encode("utf-16"), {}, 1, None, "not valid utf-8"),
    ("latin-1 byte in UTF-8 file", b"user,item,rating\nzo\xeb,a,4\n", {}, 2, b"zo\xeb,a,4", "not valid utf-8"),
    ("NUL byte as id", "1,2,3\n1,\x00,4\n", {}, 2, "\x00", "item id '\\x00' is not an integer"),
    ("boolean rating", "1,2,True\n1,3,False\n", {}, 1, True, "rating True is not a number"),
    ("boolean timestamp", "1,2,3,True\n", {}, 1, True, "timestamp True is not an integer"),
    ("hexadecimal rating", "1,2,0x10\n", {}, 1, "0x10", "rating '0x10' is not a number"),
    ("rating 1e30", "1,2,3\n1,3,1e30\n", {}, 2, 1e30, "rating 1e+30 is too large in magnitude"),
    ("rating -1e12", "1,2,3\n1,3,-1e12\n", {}, 2, -1e12, "too large in magnitude"),
    ("rating 1e39 (beyond float32)", "1,2,3\n1,3,1e39\n", {}, 2, 1e39, "too large in magnitude"),
    ("rating below the scale", "1,2,3\n1,3,0\n", {"rating_scale": (1, 5)}, 2, 0, "outside the scale [1, 5]"),
    ("NaN rating with a scale", "1,2,nan\n", {"rating_scale": (1, 5)}, 1, "nan", "rating 'nan' is not finite"),
    ("id 2**62 + 1", "1,2,3\n4611686018427387905,3,4\n", {}, 2, 2**62 + 1, "too large"),
    ("id 2**63 (uint64)", "1,2,3\n9223372036854775808,3,4\n", {}, 2, 2**63, "too large"),
    ("id 2**64 - 1 (uint64)", "1,2,3\n1,18446744073709551615,4\n", {}, 2, 2**64 - 1, "item id 1844674407370"),
    ("id of 20 digits", "1,2,3\n99999999999999999999,3,4\n", {}, 2, None, "user id 99999999999999999999 is too"),
    ("id 1e20", "1,2,3\n1e20,3,4\n", {}, 2, 1e20, "user id 1e+20 is too large"),
    ("id -1e20", "1,2,3\n-1e20,3,4\n", {}, 2, -1e20, "is negative"),
    ("id inf", "1,2,3\ninf,3,4\n", {}, 2, None, "user id inf is not an integer"),
    ("timestamp 1e30", "1,2,3,4\n1,3,4,1e30\n", {}, 2, 1e30, "timestamp 1e+30 is not an integer"),
    ("missing trailing field (tab)", "1\t2\t3\t9\n1\t2\t3\t\n", {}, 2, "", "empty timestamp field"),
    ("duplicate pair, string ids", "a,b,1\na,b,2\n", {}, 2, ("a", "b"), "duplicate rating for user 'a', item 'b'"),
    ("header only, blank lines after", "userId,movieId,rating\n\n\n", {}, None, None, "no ratings"),
]


@pytest.mark.parametrize(
    ("case", "text", "options", "line", "value", "fragment"), BAD_FILES, ids=[c[0] for c in BAD_FILES]
)
def test_bad_file(tmp_path, case, text, options, line, value, fragment):
    path = _write(tmp_path, "bad.csv", text)
    with pytest.raises(RatingsFileError) as info:
        read_ratings(path, **options)
    err = info.value
    where = f"{path}, line {line}: " if line is not None else f"{path}: "
    assert str(err).startswith(where), str(err)
    assert fragment in str(err), str(err)
    assert err.path == str(path) and err.line == line
    if value is not None:
        assert err.value == value


ACCEPTED = [
    # (case, file content, options, raw users, raw items, ratings): the documented policy
    ("no trailing newline", "1,2,3", {}, [1], [2], [3]),
    ("CR-only line ends", "1,2,3\r4,5,1\r", {}, [1, 4], [2, 5], [3, 1]),
    ("quoted fields", '"1","2","3"\n', {}, [1], [2], [3]),
    ("spaces around fields", " 1 , 2 , 3\n", {}, [1], [2], [3]),
    ("'+1' and '-0' ids are 1 and 0", "+1,-0,3\n", {}, [1], [0], [3]),
    ("id 1e3 is 1000", "1e3,2,3\n", {}, [1000], [2], [3]),
    ("id 2**62 is the largest", "4611686018427387904,2,3\n", {}, [2**62], [2], [3]),
    ("single user", "1,2,3\n1,3,4\n1,4,5\n", {}, [1, 1, 1], [2, 3, 4], [3, 4, 5]),
    ("single item", "1,9,3\n2,9,4\n", {}, [1, 2], [9, 9], [3, 4]),
    ("single rating", "7,8,2.5\n", {}, [7], [8], [2.5]),
    ("ratings on -10..10", "1,2,-10\n1,3,10\n", {"rating_scale": (-10, 10)}, [1, 1], [2, 3], [-10, 10]),
    ("ratings on 0..100", "1,2,0\n1,3,100\n", {"rating_scale": (0, 100)}, [1, 1], [2, 3], [0, 100]),
    ("rating 1e9 (the largest)", "1,2,1e9\n", {}, [1], [2], [1e9]),
    ("UTF-8 BOM, header", "\ufeffuserId,movieId,rating\n1,2,3\n", {}, [1], [2], [3]),
    ("header inferred", "userId,movieId,rating\n1,2,3\n", {}, [1], [2], [3]),
    ("no header inferred", "1,2,3\n", {}, [1], [2], [3]),
    ("duplicates='last'", "1,2,3\n1,2,5\n", {"duplicates": "last"}, [1], [2], [5]),
    ("duplicates='mean'", "1,2,3\n1,2,5\n", {"duplicates": "mean"}, [1], [2], [4]),
]


@pytest.mark.parametrize(
    ("case", "text", "options", "users", "items", "values"), ACCEPTED, ids=[c[0] for c in ACCEPTED]
)
def test_accepted_file(tmp_path, case, text, options, users, items, values):
    r = read_ratings(_write(tmp_path, "ok.csv", text), **options)
    np.testing.assert_array_equal(r.raw_users(), users)
    np.testing.assert_array_equal(r.raw_items(), items)
    np.testing.assert_array_equal(r.values, np.float32(values))


def test_non_utf8_file_reads_with_its_encoding(tmp_path):
    path = _write(tmp_path, "l1.csv", "user,item,rating\nzo\xeb,a,4\n".encode("latin-1"))
    assert read_ratings(path, encoding="latin-1").raw_users()[0] == "zo\xeb"


# ---- command-line inputs: pairs to predict, a new user's ratings ---------------------------

SMALL_BAD = [
    # (case, reader, content, line, message fragment)
    ("pairs: empty file", read_pairs, "", None, "no rows (the file is empty)"),
    ("pairs: header only", read_pairs, "userId,movieId\n", None, "no rows"),
    ("pairs: no header", read_pairs, "1,2\n3,4\n", 1, "has no user or item column"),
    ("pairs: extra field", read_pairs, "userId,movieId\n1,2\n1,2,3\n", 3, "expected 2 fields separated by ','"),
    ("pairs: missing field", read_pairs, "userId,movieId\n1\n", 2, "expected 2 fields"),
    ("pairs: empty item", read_pairs, "userId,movieId\n1,\n", 2, "no movieId value"),
    ("pairs: not UTF-8", read_pairs, b"userId,movieId\n1,\xe9\n", 2, "not valid utf-8"),
    ("new user: duplicate item", read_new_user, "movieId,rating\n1,5\n2,3\n1,4\n", 4, "item 1 is rated twice"),
    ("new user: NaN rating", read_new_user, "movieId,rating\n1,nan\n", 2, "rating 'nan' is not a finite number"),
    ("new user: inf rating", read_new_user, "movieId,rating\n1,inf\n", 2, "is not a finite number"),
    ("new user: text rating", read_new_user, "movieId,rating\n1,good\n", 2, "rating 'good' is not a finite"),
    ("new user: rating 1e30", read_new_user, "movieId,rating\n1,1e30\n", 2, "too large in magnitude"),
    ("new user: empty rating", read_new_user, "movieId,rating\n1,\n", 2, "no rating value"),
    ("new user: no rating column", read_new_user, "movieId,score2\n1,4\n", 1, "has no rating column"),
]


@pytest.mark.parametrize(("case", "reader", "text", "line", "fragment"), SMALL_BAD, ids=[c[0] for c in SMALL_BAD])
def test_bad_command_line_input(tmp_path, case, reader, text, line, fragment):
    path = _write(tmp_path, "in.csv", text)
    with pytest.raises(RatingsFileError) as info:
        reader(path)
    where = f"{path}, line {line}: " if line is not None else f"{path}: "
    assert str(info.value).startswith(where) and fragment in str(info.value), str(info.value)
    assert info.value.line == line


def test_pairs_keep_ids_as_written(tmp_path):
    """Blank lines are skipped (line numbers still count them); repeated pairs are kept;
    a column with any non-integer id stays text."""
    users, items = read_pairs(_write(tmp_path, "p.csv", "\nuserId\tmovieId\n\n1\t2\n1\t2\nabc\t3\n"))
    assert users.tolist() == ["1", "1", "abc"] and items.tolist() == [2, 2, 3]


# ---- MovieLens titles ------------------------------------------------------------------------


def _ml25m(tmp_path, titles: bytes) -> Path:
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    (folder / "movies.csv").write_bytes(titles)
    return folder


def test_non_utf8_titles_name_the_line(tmp_path):
    folder = _ml25m(tmp_path, "movieId,title,genres\n1,Toy Story,x\n2,Am\xe9lie,y\n".encode("latin-1"))
    with pytest.raises(RatingsFileError, match=r"movies\.csv, line 3: not valid utf-8 text: b'2,Am\\xe9lie,y'") as info:
        load_titles("ml-25m", path=folder)
    assert info.value.line == 3 and "encoding=" in str(info.value)
    assert load_titles("ml-25m", path=folder, encoding="latin-1")[2] == "Am\xe9lie"


def test_titles_bad_movie_id_and_bom(tmp_path):
    folder = _ml25m(tmp_path, "\ufeffmovieId,title,genres\n1,Toy Story,x\n".encode())
    assert load_titles("ml-25m", path=folder) == {1: "Toy Story"}  # the BOM is skipped
    (folder / "movies.csv").write_text("movieId,title,genres\n1,Toy Story,x\nx2,Heat,y\n")
    with pytest.raises(RatingsFileError, match=r"movies\.csv, line 3: movie id 'x2' is not an integer"):
        load_titles("ml-25m", path=folder)


# ---- id maps -----------------------------------------------------------------------------


def test_idmap_mixed_queries_match_one_by_one():
    """Queries of another type than the map: "3" and 3.0 are id 3; "x", 2.5, NaN, True match
    nothing, and one bad query does not make the others unknown."""
    int_map, _ = IdMap.encode(np.array([1, 2, 3]))
    got = int_map.index(np.array(["1", "x", "3", "99999999999999999999999"], dtype=object))
    np.testing.assert_array_equal(got, [0, -1, 2, -1])
    np.testing.assert_array_equal(int_map.index(np.array([1.0, 2.5, np.nan, np.inf, 3.0])), [0, -1, -1, -1, 2])
    np.testing.assert_array_equal(int_map.index(np.array([True])), [-1])
    str_map, _ = IdMap.encode(np.array(["1", "a"]))
    np.testing.assert_array_equal(str_map.index(np.array([1, 2])), [0, -1])


# ---- property tests: loaders never fail any other way; policies; splits ------------------

_FIELD = st.text(alphabet='0123456789.-+eEinaNfxT "\t,;:\ufeff\x00\xe9', max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_FIELD, min_size=0, max_size=5), min_size=0, max_size=6), st.sampled_from([",", "\t", "::"]))
def test_any_text_loads_or_names_the_line(tmp_path_factory, rows, sep):
    """Arbitrary text is either read or refused with a RatingsFileError naming the file and a
    line that exists; never another exception, a warning, or a crash."""
    text = "\n".join(sep.join(fields) for fields in rows)
    path = tmp_path_factory.mktemp("fuzz") / "r.txt"
    path.write_bytes(text.encode("utf-8"))
    try:
        r = read_ratings(path)
    except RatingsFileError as err:
        assert str(err).startswith(str(path)) and err.path == str(path)
        if err.line is not None:
            assert 1 <= err.line <= max(1, len(text.splitlines()))
    else:
        assert len(r) >= 1 and np.all(np.isfinite(r.values)) and np.all(np.abs(r.values) <= 1e9)
        assert len(r.user_ids) == len(np.unique(r.raw_users()))


_ROWS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 5)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(_ROWS)
def test_duplicate_policies(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("dups") / "r.csv"
    path.write_text("".join(f"{u},{i},{v}\n" for u, i, v in rows))
    pairs = [(u, i) for u, i, _ in rows]
    if len(set(pairs)) < len(pairs):
        with pytest.raises(RatingsFileError, match="duplicate rating"):
            read_ratings(path)
    last, groups = {}, {}
    for u, i, v in rows:
        last[(u, i)] = v
        groups.setdefault((u, i), []).append(v)
    for policy, want in (("last", last), ("mean", {k: np.mean(v) for k, v in groups.items()})):
        r = read_ratings(path, duplicates=policy)
        keys = zip(r.raw_users().tolist(), r.raw_items().tolist(), strict=True)
        got = dict(zip(keys, r.values.tolist(), strict=True))
        assert len(r) == len(want) and got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-6)


def _pairs(r: Ratings) -> list[tuple]:
    return sorted(zip(r.raw_users().tolist(), r.raw_items().tolist(), strict=True))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=2, max_size=60, unique=True),
    st.integers(0, 2**31),
    st.floats(0.05, 0.95),
)
def test_no_pair_lost_or_duplicated(pairs, seed, fraction):
    """By (user, item) pair, not by row: train and test are disjoint and together are the data;
    k-fold test sets partition it."""
    r = Ratings.from_raw([p[0] for p in pairs], [p[1] for p in pairs], np.ones(len(pairs)))
    every = sorted(pairs)
    for train, test in (random_split(r, fraction, seed=seed), per_user_split(r, 1, seed=seed)):
        assert sorted(_pairs(train) + _pairs(test)) == every
        assert not set(_pairs(train)) & set(_pairs(test))
    k = 2 + seed % 4
    if k <= len(r):
        tests = [_pairs(test) for _, test in kfold(r, k, seed=seed)]
        assert sorted(p for t in tests for p in t) == every


def test_splits_of_a_single_user():
    r = Ratings.from_raw(np.zeros(10, int), np.arange(10), np.arange(10.0))
    train, test = per_user_split(r, 2, seed=0)
    assert (len(train), len(test)) == (8, 2)
    assert sum(len(t) for _, t in kfold(r, 5, seed=0)) == 10


# ---- hyper-parameters: out of range is a ValueError before anything is compiled ----------

_HYPER = [
    ("als", {"rank": -1}, "rank"),
    ("als", {"rank": 2.5}, "rank"),
    ("svd", {"rank": -1}, "rank"),
    ("optax", {"rank": -1}, "rank"),
    ("gibbs", {"rank": 0}, "rank"),
    ("svi", {"rank": 0}, "rank"),
    ("nuts", {"rank": 0}, "rank"),
    ("mlp", {"rank": 0}, "rank"),
    ("autorec-i", {"hidden": 0}, "hidden"),
    ("autorec-u", {"hidden": -5}, "hidden"),
    ("als", {"lam": -0.5}, "lambda"),
    ("als", {"lam": math.nan}, "lambda"),
    ("als", {"lam_bias": -1.0}, "lambda_bias"),
    ("baseline", {"lam_bias": -1.0}, "lambda_bias"),
    ("svd", {"lam_bias": -1.0}, "lambda_bias"),
    ("optax", {"lam": -1.0}, "lambda"),
    ("mlp", {"lam": -1.0}, "lambda"),
    ("residual", {"lam_net": -1.0}, "lam_net"),
    ("autorec-i", {"lam": -1.0}, "lambda"),
    ("optax", {"learning_rate": 0.0}, "learning_rate"),
    ("optax", {"learning_rate": -0.1}, "learning_rate"),
    ("mlp", {"learning_rate": 0.0}, "learning_rate"),
    ("residual", {"learning_rate": -1.0}, "learning_rate"),
    ("autorec-u", {"learning_rate": 0.0}, "learning_rate"),
    ("svi", {"learning_rate": 0.0}, "learning_rate"),
    ("optax", {"batch_size": 0}, "batch_size"),
    ("mlp", {"batch_size": 0}, "batch_size"),
    ("autorec-i", {"batch_size": 0}, "batch_size"),
    ("svi", {"batch_size": 0}, "batch_size"),
    ("als", {"num_sweeps": 0}, "num_sweeps"),
    ("gibbs", {"num_samples": 0}, "num_samples"),
    ("gibbs", {"implicit": "yes"}, "implicit must be True or False"),
]


@contextlib.contextmanager
def _compile_events():
    """Collects JAX's compilation events (tracing, lowering, backend compile) in a list."""
    events = []

    def listen(name, *args, **kwargs):
        if name.startswith("/jax/core/compile/"):
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@pytest.fixture(scope="module")
def odd_shaped():
    """Data of a shape no other test uses, so a fit that started would have to compile."""
    return synthetic_ratings(num_users=37, num_items=23, num_ratings=300, rank=2, seed=4)[0]


@pytest.mark.parametrize(
    ("model", "options", "match"), _HYPER, ids=[f"{m}-{k}={v}" for m, o, _ in _HYPER for k, v in o.items()]
)
def test_bad_hyper_parameter_fails_before_compiling(odd_shaped, model, options, match):
    key = jax.random.PRNGKey(1)
    with _compile_events() as events, pytest.raises(ValueError, match=match):
        FITTERS[model](key, odd_shaped, **options)
    assert events == []


# ---- numerical faults, per fitter -----------------------------------------------------------


@functools.cache
def _data():
    """The contract suite's data (same shapes, so compiled programs are shared), and the
    planted model that drew it."""
    ratings, truth = synthetic_ratings(num_users=60, num_items=40, num_ratings=1200, rank=3, noise=0.4, seed=21)
    test = np.random.default_rng(0).random(len(ratings)) < 0.2
    return ratings.take(~test), ratings.take(test), truth


def _rescaled(r: Ratings, low: float, high: float) -> Ratings:
    lo, hi = 1.0, 5.0  # the synthetic ratings lie within about 1..5; map that band to low..high
    return dataclasses.replace(r, values=((r.values - lo) / (hi - lo) * (high - low) + low).astype(np.float32))


def _noise_free(r: Ratings, factor: float) -> Ratings:
    """The planted means themselves (an exactly rank-3 matrix), times ``factor``."""
    return dataclasses.replace(r, values=(factor * _data()[2].mean(r.users, r.items)).astype(np.float32))


CONSTANT = 3.0
CASES = {
    "scale 0..100": lambda r: _rescaled(r, 0.0, 100.0),
    "scale -10..10": lambda r: _rescaled(r, -10.0, 10.0),
    "constant": lambda r: dataclasses.replace(r, values=np.full(len(r), CONSTANT, np.float32)),
    "noise-free x300": lambda r: _noise_free(r, 300.0),  # ratings about 130..2000
}
MLE_RANK = 12  # more than the training ratings of several users (one has none)
MLE = {"rank": MLE_RANK, "lam": 0.0, "lam_bias": 0.0}
# The MF + ANN hybrid's fits (9-19 s each: cross-fitted bases, then its network) run with the slow checks.
_SLOW = [pytest.mark.slow]
NUMERIC = [pytest.param(m, c, id=f"{m}-{c}", marks=_SLOW if m == "residual" else []) for m in sorted(QUICK)
           if m != "nuts" for c in CASES]  # fmt: skip
NUMERIC += [pytest.param("als", "lambda 0", id="als-lambda 0"), pytest.param("optax", "lambda 0", id="optax-lambda 0")]


@functools.cache
def _fit(model: str, case: str):
    train, test, _ = _data()
    if case == "lambda 0":
        options = {**QUICK[model], **MLE}
    else:
        train, test, options = CASES[case](train), CASES[case](test), QUICK[model]
    fitted, _, _ = fit_model(model, train, options=options, seed=3)
    return fitted, train, test


def _check_unpenalised_fit(model, fitted, train):
    """lam = lam_bias = 0 at rank 12, more than several users' ratings: the fit is the
    unpenalised one. It fits its training ratings better than the default ridge at the same
    rank; for ALS the last half-sweep (items) solves the least-squares normal equations
    sum_i (r_ij - r_hat_ij) [w_i; 1] = 0 (up to the solve's jitter), and the user with no
    training rating keeps w_i = 0, b_i = 0 (its prediction falls back to c_j + mu)."""
    counts = np.bincount(train.users, minlength=train.num_users)
    assert counts.min() == 0 and np.sum(counts < MLE_RANK) > 5  # the case is what it claims to be
    ridge, _, _ = fit_model(model, train, options={**QUICK[model], "rank": MLE_RANK}, seed=3)
    fit_rmse, ridge_rmse = (rmse(predict_ratings(f, train), train.values) for f in (fitted, ridge))
    assert fit_rmse < ridge_rmse - 0.03, (fit_rmse, ridge_rmse)
    if model == "als":
        W, U, b, c, mu = (np.asarray(a, np.float64) for a in fitted.params)
        resid = train.values - (np.sum(W[train.users] * U[train.items], 1) + b[train.users] + c[train.items] + mu)
        grad = np.zeros((train.num_items, MLE_RANK + 1))
        np.add.at(grad, train.items, resid[:, None] * np.hstack([W[train.users], np.ones((len(train), 1))]))
        assert np.abs(grad).max() < 0.02, np.abs(grad).max()
        assert fit_rmse < 0.2  # 12 factors and no ridge: close to interpolating
        np.testing.assert_array_equal(W[counts == 0], 0.0)
        np.testing.assert_array_equal(b[counts == 0], 0.0)


@pytest.mark.parametrize(("model", "case"), NUMERIC)
def test_numerical_faults(model, case):
    fitted, train, test = _fit(model, case)
    pred = predict_ratings(fitted, test)
    assert pred.shape == (len(test),) and np.all(np.isfinite(pred))
    assert np.all(np.isfinite(predict_ratings(fitted, train)))
    if case == "constant":
        # Every rating is 3: the global mean is exact, and no fitter strays far from it.
        assert rmse(pred, test.values) < 0.5
    elif case == "lambda 0":
        _check_unpenalised_fit(model, fitted, train)
    else:
        # Not worse than predicting the training mean, by more than 5%.
        mean_rmse = rmse(np.full(len(test), train.values.mean()), test.values)
        assert rmse(pred, test.values) <= 1.05 * mean_rmse


def test_rank_zero_is_the_biases_only_model():
    """Policy: rank 0 is allowed where it is the biases-only model (als, optax, svd)."""
    train = _data()[0]
    als = fit_als(KEY, train, rank=0, lam_bias=3.0, num_sweeps=10).params
    base = fit_baseline(KEY, train, lam_bias=3.0, num_sweeps=10).params
    assert als.W.shape == (train.num_users, 0)
    u, i = jnp.asarray(train.users), jnp.asarray(train.items)
    np.testing.assert_array_equal(predict_with_fallback(als, u, i), predict_with_fallback(base, u, i))


def test_batch_larger_than_the_data_is_the_whole_data():
    """Policy: a minibatch larger than the training set is cut to it (same fit as batch = n)."""
    train = _data()[0]
    n = len(train)
    big = fit_optax(KEY, train, rank=3, num_epochs=3, batch_size=100 * n).params
    whole = fit_optax(KEY, train, rank=3, num_epochs=3, batch_size=n).params
    for a, b in zip(big, whole, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- unknown users and items: a fallback, never a wrapped gather -------------------------


@pytest.mark.parametrize("model", sorted(m for m in QUICK if m != "nuts"))
def test_unknown_ids_fall_back_identically(model):
    """Indices -1, N, N + 5 and 10**6 all mean "unknown": the same finite prediction, and
    not the last user's or item's (what a wrapped or clamped gather would give)."""
    fitted, train, test = _fit(model, "scale -10..10")
    n, m = train.num_users, train.num_items
    predict = fitted.predict

    def probe(users, items):  # padded to the test set's length: its compiled prediction is reused
        u, i = np.zeros(len(test), np.int32), np.zeros(len(test), np.int32)
        u[: len(users)], i[: len(items)] = users, items
        return np.asarray(predict(jnp.asarray(u), jnp.asarray(i)))[: len(users)]

    cold_user = probe([-1, n, n + 5, 10**6, n - 1], [3] * 5)
    cold_item = probe([4] * 5, [-1, m, m + 5, 10**6, m - 1])
    for got in (cold_user, cold_item):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got[:4], got[0])
        assert got[0] != got[4]
    both = probe([-1, n], [m, -1])
    assert np.isfinite(both).all() and both[0] == both[1]


def test_cli_predict_flags_unknown_ids_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["fit", "--data", "synthetic:tiny", "--model", "baseline", "--out", str(out)]) == 0
    capsys.readouterr()
    pairs = _write(tmp_path, "pairs.csv", "userId,movieId\n0,1\n123456,1\n0,654321\nabc,1\n-1,-1\n")
    assert main(["predict", "--model", str(out), "--pairs", str(pairs), "--json"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    known = [line.endswith('"known": true}') for line in rows]
    assert known == [True, False, False, False, False]
    bad = _write(tmp_path, "bad.csv", "userId,movieId\n0,1\n0,\n")
    assert main(["predict", "--model", str(out), "--pairs", str(bad)]) == 2
    assert f"{bad}, line 3: no movieId value" in capsys.readouterr().err
    dup = _write(tmp_path, "new.csv", "movieId,rating\n1,5\n1,4\n")
    assert main(["recommend", "--model", str(out), "--ratings", str(dup)]) == 2
    assert f"{dup}, line 3: item 1 is rated twice" in capsys.readouterr().err
    train = _write(tmp_path, "train.csv", "userId,movieId,rating\n1,2,3\n1,3,1e30\n")
    assert main(["fit", "--train", str(train), "--model", "baseline", "--out", str(tmp_path / "m2")]) == 2
    assert f"{train}, line 3: rating 1e+30 is too large" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


# ---- float32 Gram matrices at MovieLens-20M counts ---------------------------------------


def test_gram_of_a_row_with_a_million_ratings_is_exact_enough():
    """One row rated 10**6 times (15x ML-20M's most rated movie), every rating 100 (the
    0..100 scale): G, h and s accumulate in float32 without overflow; G and h within 1e-5 of
    float64 (of the largest entry), s within 1e-3."""
    n, k = 1_000_000, 3
    tiles = row_tiles(np.zeros(n, np.int32), np.arange(n, dtype=np.int32), np.full(n, 100.0, np.float32), 1, n,
                      layout_for_rank(k))  # fmt: skip
    factors = np.random.default_rng(0).normal(0.0, 1.0, (n, k)).astype(np.float32)
    a = np.vstack([np.hstack([factors, np.ones((n, 1), np.float32)]), np.zeros((1, k + 1), np.float32)])
    G, h, s = (np.asarray(x[0], np.float64) for x in normal_equations(jnp.asarray(a), jnp.zeros(n + 1), tiles, 0))
    a64 = a[:n].astype(np.float64)
    G64, h64 = a64.T @ a64, a64.T @ np.full(n, 100.0)
    assert np.all(np.isfinite(G)) and np.all(np.isfinite(h)) and np.isfinite(s)
    assert G[k, k] == n and h[k] == 100.0 * n  # sums of integers below 2**24 per tile: exact
    assert s == pytest.approx(1e4 * n, rel=1e-3)  # 10**10 from 31,250 float32 partial sums (about 2e-4 off)
    np.testing.assert_allclose(G, G64, rtol=0, atol=1e-5 * np.abs(G64).max())
    np.testing.assert_allclose(h, h64, rtol=0, atol=1e-5 * np.abs(h64).max())


def test_als_on_an_item_rated_100k_times():
    """A whole ALS fit (lambda 0, the MLE) with one item rated 100,000 times (ML-20M's most
    rated movie has 67,310) on the 0..100 scale."""
    n = 100_000
    rng = np.random.default_rng(1)
    users = np.concatenate([np.arange(n), np.arange(0, n, 500)])
    items = np.concatenate([np.zeros(n, int), np.ones(n // 500, int)])
    values = rng.uniform(0.0, 100.0, users.size).round()
    r = Ratings(users, items, values, IdMap.identity(n), IdMap.identity(2))
    res = fit_als(KEY, r, rank=2, lam=0.0, lam_bias=0.0, num_sweeps=3)
    assert np.all(np.isfinite(res.trace)) and all(np.all(np.isfinite(np.asarray(p))) for p in res.params)
    assert np.all(np.isfinite(predict_with_fallback(res.params, jnp.asarray(users[:1000]), jnp.asarray(items[:1000]))))


# ---- downloads --------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PROBMF_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    zpath = tmp_path / "served.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t1\n2\t1\t3\t2\n")
    monkeypatch.setitem(ml._SHA256, "ml-100k", hashlib.sha256(zpath.read_bytes()).hexdigest())
    return tmp_path / "xdg" / "probmf", zpath


def test_download_goes_to_a_temporary_name_first(cache, monkeypatch):
    root, zpath = cache
    seen = []

    def fetch(url, dest):
        dest = Path(dest)
        seen.append(dest.name)
        assert dest.parent == root and dest.name.startswith(".ml-100k.zip.") and dest.name.endswith(".part")
        assert not (root / "ml-100k.zip").exists()
        dest.write_bytes(zpath.read_bytes())

    monkeypatch.setattr(ml, "_fetch", fetch)
    assert len(load_movielens("ml-100k")) == 2 and len(seen) == 1
    assert sorted(p.name for p in root.iterdir()) == ["ml-100k", "ml-100k.zip"]


def test_interrupted_download_leaves_nothing(cache, monkeypatch):
    root, zpath = cache

    def fetch(url, dest):
        Path(dest).write_bytes(zpath.read_bytes()[:20])  # part of the file, then the network fails
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(ml, "_fetch", fetch)
    with pytest.raises(DatasetNotFoundError, match="connection reset"):
        load_movielens("ml-100k")
    assert list(root.iterdir()) == []


def test_als_keeps_the_last_finite_sweep():
    """Ratings whose squares overflow float32 make every sweep non-finite: ALS keeps the
    initial parameters, records NaN objectives and warns, instead of returning NaN factors."""
    train, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=1)
    huge = dataclasses.replace(train, values=(train.values * 1e19).astype(np.float32))
    with pytest.warns(RuntimeWarning, match="sweep 1 of 3 gave non-finite values"):
        res = fit_als(jax.random.PRNGKey(0), huge, rank=2, num_sweeps=3)
    assert np.isnan(res.trace).all()
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(res.params))
