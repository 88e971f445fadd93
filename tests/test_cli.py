"""The command line round trip: fit -> save -> info -> predict -> recommend, on tiny data."""

import json

import pytest

from probmf.cli import main


def _rows(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.mark.parametrize("model, extra", [("als", ["--rank", "2"]), ("gibbs", ["--rank", "2", "--samples", "10"])])
def test_fit_predict_recommend_round_trip(tmp_path, capsys, model, extra):
    out = tmp_path / "model"
    assert main(["fit", "--data", "synthetic:tiny", "--model", model, *extra, "--out", str(out), "--json"]) == 0
    assert _rows(capsys)[0]["saved"] == str(out)

    assert main(["info", "--model", str(out), "--json"]) == 0
    info = _rows(capsys)[0]
    assert info["model"] == model and info["rank"] == 2 and info["num_users"] == 60

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId\n0,1\n5,2\n999,1\n")
    assert main(["predict", "--model", str(out), "--pairs", str(pairs), "--json"]) == 0
    rows = _rows(capsys)
    assert [r["known"] for r in rows] == [True, True, False]
    assert all(1 <= r["prediction"] <= 5 for r in rows) or model == "als"
    assert ("sd" in rows[0]) == (model == "gibbs")

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
