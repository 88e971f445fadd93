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


class _ScoreTable:
    """A model whose predicted mean of (user, item) is ``table[user, item]``."""

    def __init__(self, table):
        self.table = jnp.asarray(table)

    def predict(self, users, items):
        return self.table[users, items]


def _random_case(seed, num_users=30, num_items=40):
    """Disjoint random training and held-out pairs (about 30% and 20% of the matrix), held-out
    stars uniform on 1..5 (so some users have no rating >= 4), and each user's scores a random
    permutation of 0..M-1: distinct, so there are no ties to break."""
    rng = np.random.default_rng(seed)
    cell = rng.random((num_users, num_items))
    train_u, train_i = np.nonzero(cell < 0.3)
    test_u, test_i = np.nonzero(cell > 0.8)
    stars = rng.integers(1, 6, test_u.size).astype(np.float32)
    users, items = IdMap.identity(num_users), IdMap.identity(num_items)
    train = Ratings(train_u, train_i, np.full(train_u.size, 3.0, np.float32), users, items)
    test = Ratings(test_u, test_i, stars, users, items)
    scores = np.stack([rng.permutation(num_items) for _ in range(num_users)]).astype(np.float32)
    return train, test, scores


@pytest.mark.slow  # ranx compiles its numba kernels: about a minute after an install, 8 s with its cache
# numba's, inside ranx; its message may open with terminal colour codes, hence the leading ".*"
@pytest.mark.filterwarnings("ignore:.*unsafe cast from uint64 to int64")
@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_matches_ranx(seed):
    """precision, recall and NDCG@k against ranx (an independent implementation) on random data.

    The definitions match: ranx's run for a user holds every item the user did not rate in
    training, scored by the model (probmf leaves training items out the same way); its qrels,
    the held-out items rated >= 4 with relevance 1. ranx's precision@k divides the hits by k,
    recall@k by the number of relevant items, and "ndcg@k" (Jarvelin & Kekalainen, linear gain)
    divides DCG@k by the ideal DCG of the qrels' top k, i.e. of min(k, |relevant|) hits: with
    binary relevance the same formulas as `ranking`. Users with no relevant held-out item are
    ranked by neither (probmf skips them; ranx sees only the qrels' users). Ties are not tested:
    probmf breaks them by item index (a stable sort), ranx by its own order, so the scores here
    are distinct.
    """
    ranx = pytest.importorskip("ranx", reason="ranx (in the test extra) is the reference implementation")
    train, test, scores = _random_case(seed)
    relevant = test.values >= 4.0
    qrels = {}
    for u, i in zip(test.users[relevant], test.items[relevant], strict=True):
        qrels.setdefault(f"u{u}", {})[f"i{i}"] = 1
    rated = np.zeros(scores.shape, bool)
    rated[train.users, train.items] = True
    run = {q: {f"i{i}": float(scores[int(q[1:]), i]) for i in np.flatnonzero(~rated[int(q[1:])])} for q in qrels}
    users_without = set(range(train.num_users)) - {int(q[1:]) for q in qrels}
    assert users_without & set(test.users.tolist())  # the case has held-out users with nothing relevant
    for k in (1, 5, 10):
        ours = ranking(_ScoreTable(scores), train, test, k=k)
        theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), [f"precision@{k}", f"recall@{k}", f"ndcg@{k}"])
        assert ours["n_ranked_users"] == len(qrels)
        for name in ("precision", "recall", "ndcg"):
            np.testing.assert_allclose(ours[f"{name}_at_{k}"], theirs[f"{name}@{k}"], rtol=1e-12, err_msg=f"{name}@{k}")
