"""Top-k metrics by hand on a tiny case, and through `probmf evaluate --ranking`."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from probmf.cli import main
from probmf.data.ratings import IdMap, Ratings
from probmf.metrics import ranking
from probmf.model import MFParams


def _case(item_bias):
    """User 0 rated item 0 in training; held out: item 1 (5 stars), item 2 (2), item 3 (4)."""
    ids = IdMap.identity(4)
    train = Ratings(np.array([0, 1]), np.array([0, 2]), np.array([4.0, 3.0]), IdMap.identity(2), ids)
    test = Ratings(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([5.0, 2.0, 4.0]), IdMap.identity(2), ids)
    params = MFParams(jnp.zeros((2, 0)), jnp.zeros((4, 0)), jnp.zeros(2), jnp.asarray(item_bias, jnp.float32), 0.0)
    return params, train, test


def test_perfect_ranking():
    params, train, test = _case([10.0, 3.0, 1.0, 2.0])  # item 0 is best but already rated
    got = ranking(params, train, test, k=2)
    assert got == {"precision_at_2": 1.0, "recall_at_2": 1.0, "ndcg_at_2": 1.0, "n_ranked_users": 1}
    got = ranking(params, train, test, k=1)
    assert got["precision_at_1"] == 1.0 and got["recall_at_1"] == 0.5 and got["ndcg_at_1"] == 1.0


def test_one_miss_at_the_top():
    params, train, test = _case([10.0, 1.0, 3.0, 2.0])  # top 2: item 2 (not relevant), item 3
    got = ranking(params, train, test, k=2)
    assert got["precision_at_2"] == 0.5 and got["recall_at_2"] == 0.5
    assert got["ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_evaluate_ranking_flag(capsys):
    assert main(["evaluate", "--data", "synthetic:tiny", "--model", "baseline", "--ranking", "5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    for key in ("precision_at_5", "recall_at_5", "ndcg_at_5"):
        assert 0.0 <= row[key] <= 1.0
    assert row["n_ranked_users"] > 0
