"""The command line round trip: fit -> save -> info -> predict -> recommend, on tiny data."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from probmf.cli import main
from probmf.data.io import write_ratings
from probmf.data.synthetic import synthetic_preset
from probmf.persistence import load_model


def _rows(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _means(fitted, users, items) -> np.ndarray:
    """A fitted model's predicted means at dense (users, items), unclipped."""
    return np.asarray(fitted.predict(jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)))


@pytest.mark.parametrize(
    "model, extra",
    [("als", ["--rank", "2", "--lambda", "0.05"]), ("gibbs", ["--rank", "2", "--samples", "10"]),
     ("gibbs", ["--rank", "2", "--warmup", "5", "--samples", "10", "--implicit"])],
)  # fmt: skip
def test_fit_predict_recommend_round_trip(tmp_path, capsys, model, extra):
    out = tmp_path / "model"
    # tiny's ratings rounded to 1..5 stars, so that some predicted means leave the rating range
    ratings = synthetic_preset("tiny")[0]
    write_ratings(dataclasses.replace(ratings, values=np.clip(np.round(ratings.values), 1, 5)), tmp_path / "r.csv")
    assert main(["fit", "--train", str(tmp_path / "r.csv"), "--model", model, *extra, "--out", str(out), "--json"]) == 0
    assert _rows(capsys)[0]["saved"] == str(out)

    assert main(["info", "--model", str(out), "--json"]) == 0
    info = _rows(capsys)[0]
    assert info["model"] == model and info["rank"] == 2 and info["num_users"] == 60

    # The saved model's own means over every known pair: predictions are these, clipped to the
    # training range; the pairs where they are highest and lowest test the clipping.
    saved = load_model(out)
    lo, hi = saved.rating_range
    grid = _means(saved.fitted, *np.indices((len(saved.user_ids), len(saved.item_ids))).reshape(2, -1))
    extreme = [np.unravel_index(f(grid), (len(saved.user_ids), len(saved.item_ids))) for f in (np.argmax, np.argmin)]
    raw = [(0, 1), (5, 2), (999, 1)] + [(saved.user_ids.raw[u], saved.item_ids.raw[i]) for u, i in extreme]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId\n" + "".join(f"{u},{i}\n" for u, i in raw))
    assert main(["predict", "--model", str(out), "--pairs", str(pairs), "--json"]) == 0
    rows = _rows(capsys)
    assert [r["known"] for r in rows] == [True, True, False, True, True]
    users, items = (saved.user_ids.index([p[0] for p in raw]), saved.item_ids.index([p[1] for p in raw]))
    want = np.clip(_means(saved.fitted, users, items), lo, hi)
    assert (lo, hi) == (1, 5) and (grid.max() > hi or grid.min() < lo or model != "als")  # ALS's means leave 1..5
    np.testing.assert_allclose([r["prediction"] for r in rows], want, rtol=0, atol=1e-4)
    assert all(lo <= r["prediction"] <= hi for r in rows)
    # Every model reports an sd: a posterior's predictive sd, a point estimate's plug-in sd.
    assert all(r["sd"] > 0 for r in rows)
    if model != "gibbs":
        assert {r["sd"] for r in rows} == {round(saved.fitted.noise_sd, 4)}

    assert main(["recommend", "--model", str(out), "--user", "3", "-n", "4", "--json"]) == 0
    recs = _rows(capsys)
    assert [r["rank"] for r in recs] == [1, 2, 3, 4]
    assert len({r["movieId"] for r in recs}) == 4

    new = tmp_path / "new.csv"
    new.write_text("movieId,rating\n1,5\n2,1\n")
    assert main(["recommend", "--model", str(out), "--ratings", str(new), "-n", "3", "--json"]) == 0
    assert {r["movieId"] for r in _rows(capsys)}.isdisjoint({1, 2})


def test_clear_errors(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["fit", "--data", "synthetic:tiny", "--model", "baseline", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), "--user", "12345"]) == 2
    assert "not known" in capsys.readouterr().err
    assert main(["recommend", "--model", str(out), "--user", "1", "--strategy", "ucb"]) == 2
    assert "Bayesian" in capsys.readouterr().err
    assert main(["info", "--model", str(tmp_path / "nothing")]) == 2
    assert "not a saved probmf model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def als_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    assert main(["fit", "--data", "synthetic:tiny", "--model", "als", "--rank", "2", "--out", str(out)]) == 0
    return out


def test_recommend_shows_titles_from_a_titles_file(tmp_path, capsys, als_model):
    capsys.readouterr()
    assert main(["recommend", "--model", str(als_model), "--user", "3", "-n", "40", "--json"]) == 0
    plain = _rows(capsys)
    assert plain and all(r["title"] is None for r in plain)  # no titles known: the field is null

    # u.item style (id|title|...) in Latin-1; items 0 and 1 are not in the file
    expected = {i: f"Film {i} (19{50 + i})" for i in range(2, 39)} | {39: "Cit\xe9 (1995)"}
    u_item = tmp_path / "u.item"
    u_item.write_bytes("".join(f"{i}|{t}|01-Jan-1995||\n" for i, t in expected.items()).encode("latin-1"))
    args = ["recommend", "--model", str(als_model), "--user", "3", "-n", "40", "--titles", str(u_item)]
    assert main([*args, "--json"]) == 0
    rows = _rows(capsys)
    assert [r["movieId"] for r in rows] == [r["movieId"] for r in plain]
    assert all(r["title"] == expected.get(r["movieId"]) for r in rows)
    assert {0, 1} & {r["movieId"] for r in rows}  # unknown titles are there, and null

    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(rows)
    for line, r in zip(lines, rows, strict=True):
        assert line.startswith(f"rank={r['rank']}  movieId={r['movieId']}  ")
        assert line.endswith(f"  title={r['title'] or '?'}")

    # CSV movieId,title,genres (ML-20M's movies.csv), quoted titles with commas
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n5,"Matrix, The (1999)",Action|Sci-Fi\n7,Heat (1995),Crime\n')
    new = tmp_path / "new.csv"
    new.write_text("movieId,rating\n1,5\n2,1\n")
    args = ["recommend", "--model", str(als_model), "--ratings", str(new), "-n", "38", "--titles", str(movies)]
    assert main([*args, "--json"]) == 0
    titles = {r["movieId"]: r["title"] for r in _rows(capsys)}
    assert titles[5] == "Matrix, The (1999)" and titles[7] == "Heat (1995)"
    assert all(t is None for item, t in titles.items() if item not in (5, 7))


@pytest.mark.parametrize(
    "content, line",
    [
        ("1|Alpha (1990)|\n2|Beta (1991)|\n3\n", 3),  # a line without a title field
        ("1|Alpha (1990)|\n\n1|Alpha again|\n", 3),  # an id seen before
        ("movieId,title\n1,Alpha\n,Beta\n", 3),  # an empty id
    ],
)
def test_recommend_with_a_malformed_titles_file_names_file_and_line(tmp_path, capsys, als_model, content, line):
    bad = tmp_path / "titles.txt"
    bad.write_text(content)
    capsys.readouterr()
    assert main(["recommend", "--model", str(als_model), "--user", "3", "--titles", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}, line {line}:" in captured.err
    assert main(["recommend", "--model", str(als_model), "--user", "3", "--titles", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none'}: cannot read the titles file" in capsys.readouterr().err


def test_recommend_finds_the_titles_of_the_movielens_set_the_model_names(tmp_path, capsys, ml100k_dir):
    """A saved model whose model.json names its MovieLens dataset gets that dataset's titles."""
    out = tmp_path / "model"
    assert main(["fit", "--data", "synthetic:tiny", "--model", "baseline", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "dataset": "ml-100k"}))
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), "--user", "3", "-n", "40", "--json"]) == 0
    titles = {r["movieId"]: r["title"] for r in _rows(capsys)}
    assert titles[1] == "Toy Story (1995)" and titles[0] is None  # ML-100K ids start at 1


@pytest.mark.slow
def test_evaluate_summary_only_checkpoint_and_devices_flags(tmp_path, capsys):
    """--summary-only keeps predictive moments only; --checkpoint resumes (a rerun reads the
    finished checkpoint and gives the same row); --devices beyond JAX's devices is a clear error."""
    base = ["evaluate", "--data", "synthetic:tiny", "--split", "holdout", "--model", "gibbs", "--rank", "2",
            "--samples", "6", "--warmup", "2", "--json"]  # fmt: skip
    assert main([*base, "--summary-only", "--checkpoint", str(tmp_path), "--checkpoint-every", "3"]) == 0
    (first,) = _rows(capsys)
    assert first["num_samples"] == 6 and first["r_hat_max"] is None and first["options"]["keep_draws"] is False
    assert len(list(tmp_path.glob("gibbs-*.npz"))) == 1
    assert main([*base, "--summary-only", "--checkpoint", str(tmp_path), "--checkpoint-every", "3"]) == 0
    (again,) = _rows(capsys)
    assert again["rmse"] == first["rmse"] and again["coverage_90"] == first["coverage_90"]
    assert main([*base, "--devices", "64"]) == 2
    assert "xla_force_host_platform_device_count" in capsys.readouterr().err


def test_help_and_version_answer_without_importing_jax_or_the_fitters():
    """`probmf --help` and `--version` parse without JAX (imported by the commands that need it)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from probmf.cli import main\n"
        "for argv in (['--help'], ['--version'], ['evaluate', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('jax', 'numpy', 'probmf.fitters') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    import probmf

    assert f"probmf {probmf.__version__}" in out
    assert out.strip().splitlines()[-1] == "[]", out


def test_the_parsers_names_are_the_registered_fitters_and_strategies():
    from probmf import cli
    from probmf.fitters import FITTERS
    from probmf.recommend import STRATEGIES

    assert cli.MODELS == tuple(sorted(FITTERS))
    assert cli.STRATEGIES == STRATEGIES
