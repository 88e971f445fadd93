"""Partitioned ratings folders: written once, read back by row range, fitted as the ratings
in memory are. Several processes each reading their own rows: tests/test_multiprocess.py."""

import json

import jax
import numpy as np
import pytest

from probmf.cli import main
from probmf.data.io import write_ratings
from probmf.data.partitioned import PartitionError, load_rows, open_partitioned, partition, read_all
from probmf.data.ratings import IdMap, Ratings
from probmf.data.synthetic import synthetic_preset
from probmf.fitters.als import fit_als
from probmf.fitters.gibbs import fit_gibbs


@pytest.fixture(scope="module")
def tiny():
    return synthetic_preset("tiny")[0]


def _triples(r: Ratings) -> set:
    return set(zip(r.raw_users().tolist(), r.raw_items().tolist(), r.values.tolist(), strict=True))


def test_a_range_of_rows_comes_from_its_blocks_files_in_input_order(tiny, tmp_path):
    part = partition(tiny, tmp_path / "p", 3)
    assert (part.num_users, part.num_items, len(part)) == (tiny.num_users, tiny.num_items, len(tiny))
    assert part.user_ids == tiny.user_ids and part.item_ids == tiny.item_ids
    assert part.mu == float(np.mean(tiny.values, dtype=np.float64))
    np.testing.assert_array_equal(part.item_counts, np.bincount(tiny.items, minlength=tiny.num_items))
    assert _triples(read_all(part)) == _triples(tiny)
    block = part.blocks["user"]  # 20 users a file
    lo, hi = block - 3, block + 2  # across the first two blocks
    keep = (tiny.users >= lo) & (tiny.users < hi)
    order = np.argsort(tiny.users[keep], kind="stable")  # by row, in input order within a row
    for batch_size in (7, 1 << 20):  # many batches, or one a file
        got = load_rows(part, "user", lo, hi, batch_size=batch_size)
        assert [f.rsplit("/", 1)[-1] for f in got.files] == ["part-00000.parquet", "part-00001.parquet"]
        for a, b in zip(got[:3], (tiny.users, tiny.items, tiny.values), strict=True):
            np.testing.assert_array_equal(a, b[keep][order])
    items = load_rows(part, "item", 0, 1)
    assert len(items.files) == 1 and np.all(items.rows == 0) and items.rows.size == part.item_counts[0]
    assert load_rows(part, "user", 5, 5).rows.size == 0


def test_als_on_a_partitioned_folder_is_als_on_the_ratings(tiny, tmp_path):
    key = jax.random.PRNGKey(1)
    one = fit_als(key, tiny, rank=2, num_sweeps=3)
    part = partition(tiny, tmp_path / "p", 2)
    two = fit_als(key, part, rank=2, num_sweeps=3, checkpoint=tmp_path / "ckpt", checkpoint_every=3)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.trace, two.trace)
    # The checkpoint's fingerprint is the folder's digest of its ratings: the same fit resumes.
    (saved,) = (tmp_path / "ckpt").iterdir()
    again = fit_als(key, open_partitioned(part.path), rank=2, num_sweeps=3, checkpoint=tmp_path / "ckpt",
                    checkpoint_every=3)  # fmt: skip
    assert list((tmp_path / "ckpt").iterdir()) == [saved]
    np.testing.assert_array_equal(again.params.W, two.params.W)


def test_string_ids_and_more_parts_than_rows(tmp_path):
    r = Ratings.from_raw(["b", "a", "b"], ["x", "y", "y"], [1.0, 2.0, 3.0])
    part = partition(r, tmp_path / "p", 5)  # 2 users in 5 blocks: some files are empty
    assert part.user_ids.raw.tolist() == ["a", "b"]
    assert _triples(read_all(part)) == _triples(r)
    assert load_rows(part, "user", 1, 2).vals.tolist() == [1.0, 3.0]


def test_bad_input_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="parts must be a positive integer"):
        partition(tiny, tmp_path / "p", 0)
    cold = Ratings(np.array([0, -1]), np.array([0, 0]), np.array([1.0, 2.0]), IdMap.identity(1), IdMap.identity(1))
    with pytest.raises(ValueError, match="unknown"):
        partition(cold, tmp_path / "p", 1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a partitioned ratings folder"):
        partition(tiny, tmp_path / "other", 2)
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"  # left as it was
    with pytest.raises(FileNotFoundError, match="meta.json"):
        open_partitioned(tmp_path / "other")
    with pytest.raises(ValueError, match="outside"):
        load_rows(partition(tiny, tmp_path / "p", 2), "user", 0, tiny.num_users + 1)


def test_a_damaged_folder_names_the_file(tiny, tmp_path):
    path = partition(tiny, tmp_path / "p", 2).path
    counts = np.load(path / "user_counts.npy")
    np.save(path / "user_counts.npy", np.roll(counts, 1))  # same total, wrong rows
    with pytest.raises(PartitionError, match="user_counts.npy"):
        load_rows(open_partitioned(path), "user", 0, tiny.num_users)
    np.save(path / "user_counts.npy", counts[:-1])
    with pytest.raises(PartitionError, match="user_counts.npy"):
        open_partitioned(path)
    np.save(path / "user_counts.npy", counts)
    (path / "by_item" / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(PartitionError, match="part-00001.parquet"):
        load_rows(open_partitioned(path), "item", 0, tiny.num_items)
    (path / "by_item" / "part-00001.parquet").unlink()
    with pytest.raises(PartitionError, match="part-00001.parquet: missing"):
        open_partitioned(path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(PartitionError, match="version 99"):
        open_partitioned(path)


def test_cli_partition(tiny, tmp_path, capsys):
    write_ratings(tiny, tmp_path / "r.csv")
    assert main(["partition", "--train", str(tmp_path / "r.csv"), "--out", str(tmp_path / "p"), "--parts", "2",
                 "--json"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    assert (info["n_ratings"], info["parts"]) == (len(tiny), 2)
    assert _triples(read_all(open_partitioned(tmp_path / "p"))) == _triples(tiny)
    assert main(["partition", "--train", str(tmp_path / "r.csv"), "--out", str(tmp_path / "r.csv"), "--parts",
                 "2"]) == 2  # fmt: skip
    assert "not a partitioned ratings folder" in capsys.readouterr().err


def test_cli_fits_a_partitioned_folder_into_the_model_of_its_ratings_file(tiny, tmp_path, capsys):
    """``probmf fit --train DIR`` saves what ``--train FILE`` saves for the same ratings: the
    parameters, the plug-in sd (each process's squared errors summed) and the rated items;
    a fitter that needs every rating is refused by name."""
    write_ratings(tiny, tmp_path / "r.csv")
    assert main(["partition", "--train", str(tmp_path / "r.csv"), "--out", str(tmp_path / "p"), "--parts", "3"]) == 0
    capsys.readouterr()
    fit = ["fit", "--model", "als", "--rank", "3", "--num-sweeps", "3", "--json"]
    assert main([*fit, "--train", str(tmp_path / "p"), "--out", str(tmp_path / "from-dir")]) == 0
    assert main([*fit, "--train", str(tmp_path / "r.csv"), "--out", str(tmp_path / "from-file")]) == 0
    infos = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [i["n_train"] for i in infos] == [len(tiny)] * 2
    got, want = (np.load(tmp_path / name / "arrays.npz") for name in ("from-dir", "from-file"))
    assert sorted(got) == sorted(want) and "rated_items" in want
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    meta = [json.loads((tmp_path / name / "model.json").read_text()) for name in ("from-dir", "from-file")]
    assert [m.pop("dataset") for m in meta] == [str(tmp_path / "p"), str(tmp_path / "r.csv")]
    # The plug-in sd: a float64 sum of each part's squared errors against a float32 mean.
    sds = [m["structure"]["fields"].pop("noise_sd")["value"] for m in meta]
    assert sds[0] == pytest.approx(sds[1], rel=1e-6)
    assert meta[0] == meta[1]
    assert main(["fit", "--model", "svd", "--train", str(tmp_path / "p"), "--out", str(tmp_path / "svd")]) == 2
    assert "fitted by als or gibbs" in capsys.readouterr().err
    assert not (tmp_path / "svd").exists()


@pytest.mark.slow  # ~15 s: two Gibbs compilations
def test_gibbs_on_a_partitioned_folder_is_gibbs_on_the_ratings(tiny, tmp_path):
    key = jax.random.PRNGKey(2)
    part = partition(tiny, tmp_path / "p", 2)
    one = fit_gibbs(key, tiny, rank=2, num_warmup=2, num_samples=2, init_sweeps=2)
    two = fit_gibbs(key, part, rank=2, num_warmup=2, num_samples=2, init_sweeps=2)
    for a, b in zip(jax.tree.leaves(one.posterior), jax.tree.leaves(two.posterior), strict=True):
        np.testing.assert_array_equal(a, b)


def test_gibbs_refuses_what_needs_every_rating_on_a_partitioned_folder(tiny, tmp_path):
    part = partition(tiny, tmp_path / "p", 2)
    with pytest.raises(ValueError, match="plain model only, not likelihood='rounded', implicit"):
        fit_gibbs(jax.random.PRNGKey(0), part, rank=2, num_warmup=1, num_samples=1, implicit=True, likelihood="rounded")
