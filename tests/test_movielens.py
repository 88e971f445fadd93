"""Tests for probmf.data.movielens: locating, downloading (no network: the fetch is replaced),
safe extraction, official splits and titles; plus the real ML-100K folds when available."""

import hashlib
import stat
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from probmf.data import (
    DatasetNotFoundError,
    UnsafeArchiveError,
    load_movielens,
    load_split,
    load_split_or_synthetic,
    load_titles,
)
from probmf.data import movielens as ml

# Every test here runs isolated (tests/conftest.py): no network, no real data folder.
pytestmark = pytest.mark.usefixtures("isolated")


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|GoldenEye (1995)|01-Jan-1995||http://x|0|1\n3|Café (1998)|x||y|0\n"
)


def make_ml100k(folder: Path, n_users: int = 3) -> Path:
    """A tiny ml-100k folder: u.data with ``n_users`` users, one split, u.item."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{u}\t{i}\t{1 + (u + i) % 5}\t{880000000 + 10 * u + i}" for u in range(1, n_users + 1) for i in (1, 2)]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    (folder / "u1.base").write_text("1\t1\t5\t1\n1\t2\t3\t2\n2\t1\t4\t3\n")
    (folder / "u1.test").write_text("2\t2\t1\t4\n3\t1\t2\t5\n2\t3\t5\t6\n")
    (folder / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    return folder


def make_zip(path: Path, members: dict) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ml100k_zip(tmp_path) -> tuple[Path, str]:
    src = make_ml100k(tmp_path / "src" / "ml-100k", n_users=4)
    members = {f"ml-100k/{f.name}": f.read_bytes() for f in sorted(src.iterdir())}
    members["ml-100k/"] = b""
    zpath = tmp_path / "served.zip"
    return zpath, make_zip(zpath, members)


def serve(monkeypatch, zpath: Path, calls: list):
    def fake_fetch(url, dest):
        calls.append(url)
        Path(dest).write_bytes(zpath.read_bytes())

    monkeypatch.setattr(ml, "_fetch", fake_fetch)


# ---- locating -----------------------------------------------------------------------------


def test_explicit_path(tmp_path):
    folder = make_ml100k(tmp_path / "anywhere")
    r = load_movielens("ml-100k", path=folder)
    assert len(r) == 6 and r.source == str(folder / "u.data")
    assert r.timestamps is not None
    # a folder holding ml-100k/ works too
    make_ml100k(tmp_path / "parent" / "ml-100k")
    assert load_movielens("ml-100k", path=tmp_path / "parent").source == str(tmp_path / "parent" / "ml-100k" / "u.data")


def test_explicit_path_missing_is_not_searched_further(tmp_path, monkeypatch, isolated):
    make_ml100k(isolated / "ml-100k")  # would be found in the cache
    with pytest.raises(DatasetNotFoundError, match=r"no u\.data in .*empty") as info:
        load_movielens("ml-100k", path=tmp_path / "empty")
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in str(info.value)


def test_location_order(tmp_path, monkeypatch, isolated):
    explicit = make_ml100k(tmp_path / "explicit", n_users=1)
    env_root = tmp_path / "env"
    make_ml100k(env_root / "ml-100k", n_users=2)
    make_ml100k(isolated / "ml-100k", n_users=3)

    # cache only
    assert len(load_movielens("ml-100k")) == 6
    # env var beats the cache
    monkeypatch.setenv("PROBMF_DATA_DIR", str(env_root))
    assert len(load_movielens("ml-100k")) == 4
    # explicit path beats both
    assert len(load_movielens("ml-100k", path=explicit)) == 2
    # env var set but without the dataset: falls through to the cache
    monkeypatch.setenv("PROBMF_DATA_DIR", str(tmp_path / "elsewhere"))
    assert len(load_movielens("ml-100k")) == 6


def test_default_cache_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make_ml100k(tmp_path / "home" / ".cache" / "probmf" / "ml-100k")
    assert len(load_movielens("ml-100k")) == 6


def test_archive_folder_name_is_accepted(tmp_path, monkeypatch):
    # ml-10m.zip unpacks to ml-10M100K/
    folder = tmp_path / "data" / "ml-10M100K"
    folder.mkdir(parents=True)
    (folder / "ratings.dat").write_text("1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::868245777\n")
    (folder / "movies.dat").write_text("122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action\n")
    monkeypatch.setenv("PROBMF_DATA_DIR", str(tmp_path / "data"))
    r = load_movielens("ml-10m")
    np.testing.assert_array_equal(r.values, [5, 4.5, 0.5])
    assert load_titles("ml-10m") == {122: "Boomerang (1992)", 185: "Net, The (1995)"}
    with pytest.raises(DatasetNotFoundError, match=r"r1\.train not found .*split_ratings\.sh"):
        load_split("ml-10m", "r1")
    (folder / "r1.train").write_text("1::122::5::838985046\n2::122::0.5::868245777\n")
    (folder / "r1.test").write_text("1::185::4.5::838983525\n3::7::1::1\n")
    train, test = load_split("ml-10m", "r1")
    np.testing.assert_array_equal(test.users, [0, -1])
    np.testing.assert_array_equal(test.items, [-1, -1])


def test_ml1m_and_csv_datasets(tmp_path):
    one = tmp_path / "ml-1m"
    one.mkdir()
    (one / "ratings.dat").write_text("1::1193::5::978300760\n2::1193::4::978298413\n")
    (one / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n7::Café::x\n".encode("latin-1")
    )
    assert len(load_movielens("ml-1m", path=one)) == 2
    assert load_titles("ml-1m", path=one)[7] == "Café"

    big = tmp_path / "ml-25m"
    big.mkdir()
    (big / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,306,3.5,1147868817\n")
    (big / "movies.csv").write_text(
        "movieId,title,genres\n"
        "296,Pulp Fiction (1994),Crime\n"
        '306,"Three Colors: Red (Trois couleurs: Rouge) (1994)",Drama\n'
        '11,"American President, The (1995)",Comedy\n'
    )
    r = load_movielens("ml-25m", path=big)
    np.testing.assert_array_equal(r.raw_items(), [296, 306])
    titles = load_titles("ml-25m", path=big)
    assert titles[11] == "American President, The (1995)" and len(titles) == 3


def test_ratings_outside_the_scale_are_errors(tmp_path):
    folder = make_ml100k(tmp_path / "ml-100k")
    (folder / "u.data").write_text("1\t1\t5\t1\n1\t2\t6\t2\n")
    with pytest.raises(ValueError, match=r"u\.data, line 2: rating 6 is outside the scale \[1, 5\]"):
        load_movielens("ml-100k", path=folder)


def test_split_file_and_titles(tmp_path):
    folder = make_ml100k(tmp_path / "ml-100k")
    assert len(load_movielens("ml-100k", path=folder, split="u1.test")) == 3
    titles = load_titles("ml-100k", path=folder)
    assert titles == {1: "Toy Story (1995)", 2: "GoldenEye (1995)", 3: "Café (1998)"}


def test_load_split_reindexes_test_into_train_space(tmp_path):
    folder = make_ml100k(tmp_path / "ml-100k")
    train, test = load_split("ml-100k", "u1", path=folder)
    assert test.user_ids == train.user_ids and test.item_ids == train.item_ids
    # test rows: (2, 2) known, (3, 1) cold user, (2, 3) cold item
    np.testing.assert_array_equal(test.users, [1, -1, 1])
    np.testing.assert_array_equal(test.items, [1, 0, -1])
    np.testing.assert_array_equal(test.known, [True, False, False])


def test_split_or_synthetic_falls_back_only_when_absent(tmp_path):
    train, test, on_movielens = load_split_or_synthetic("ml-100k", "u1", path=make_ml100k(tmp_path / "ml-100k"))
    assert on_movielens and (len(train), len(test)) == (3, 3)
    train, test, on_movielens = load_split_or_synthetic("ml-100k", "u1", download=False, seed=3)
    assert not on_movielens and len(train) + len(test) == 100_000 and 0.19 < len(test) / 100_000 < 0.21


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="unknown MovieLens dataset 'ml-5m'"):
        load_movielens("ml-5m")
    folder = make_ml100k(tmp_path / "ml-100k")
    with pytest.raises(ValueError, match="no official split 'u9'"):
        load_split("ml-100k", "u9", path=folder)
    with pytest.raises(ValueError, match="no split file 'u1.train'"):
        load_movielens("ml-100k", path=folder, split="u1.train")
    with pytest.raises(ValueError, match="no official split"):
        load_split("ml-20m", "u1", path=folder)


# ---- downloading --------------------------------------------------------------------------


def test_download_verify_extract(tmp_path, monkeypatch, isolated):
    zpath, digest = ml100k_zip(tmp_path)
    monkeypatch.setitem(ml._SHA256, "ml-100k", digest)
    calls = []
    serve(monkeypatch, zpath, calls)
    r = load_movielens("ml-100k")
    assert len(r) == 8 and calls == ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"]
    assert (isolated / "ml-100k" / "u.data").is_file() and (isolated / "ml-100k.zip").is_file()
    assert sorted(p.name for p in isolated.iterdir()) == ["ml-100k", "ml-100k.zip"]  # no temp leftovers
    # the second time it is on disk
    assert len(load_movielens("ml-100k")) == 8 and len(calls) == 1


def test_verified_cached_zip_is_extracted_without_fetching(tmp_path, monkeypatch, isolated):
    zpath, digest = ml100k_zip(tmp_path)
    monkeypatch.setitem(ml._SHA256, "ml-100k", digest)
    isolated.mkdir(parents=True)
    (isolated / "ml-100k.zip").write_bytes(zpath.read_bytes())
    assert len(load_movielens("ml-100k")) == 8  # the autouse fixture forbids fetching


def test_corrupt_cached_zip_is_deleted_and_refetched(tmp_path, monkeypatch, isolated):
    zpath, digest = ml100k_zip(tmp_path)
    monkeypatch.setitem(ml._SHA256, "ml-100k", digest)
    isolated.mkdir(parents=True)
    (isolated / "ml-100k.zip").write_bytes(zpath.read_bytes()[:-10])  # truncated earlier download
    calls = []
    serve(monkeypatch, zpath, calls)
    assert len(load_movielens("ml-100k")) == 8
    assert len(calls) == 1
    assert (isolated / "ml-100k.zip").read_bytes() == zpath.read_bytes()


def test_fetched_file_with_wrong_hash_is_discarded(tmp_path, monkeypatch, isolated):
    zpath, digest = ml100k_zip(tmp_path)
    monkeypatch.setitem(ml._SHA256, "ml-100k", "0" * 64)
    serve(monkeypatch, zpath, [])
    with pytest.raises(DatasetNotFoundError, match=f"has SHA-256 {digest}, expected 0000"):
        load_movielens("ml-100k")
    assert list(isolated.iterdir()) == []


def test_no_pinned_hash_means_no_download(monkeypatch):
    calls = []
    monkeypatch.setattr(ml, "_fetch", lambda url, dest: calls.append(url))
    with pytest.raises(DatasetNotFoundError, match="no known SHA-256 for .*ml-32m.zip"):
        load_movielens("ml-32m")
    assert calls == []


def test_offline_error_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch, isolated):
    def offline(url, dest):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ml, "_fetch", offline)
    monkeypatch.setenv("PROBMF_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_movielens("ml-100k")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for part in (
        str(tmp_path / "data" / "ml-100k"),
        str(isolated / "ml-100k"),
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "Temporary failure in name resolution",
        "unzip",
        "PROBMF_DATA_DIR",
        "path=",
    ):
        assert part in msg
    assert not any(p.name.endswith(".part") for p in isolated.iterdir())


def test_download_false(monkeypatch):
    with pytest.raises(DatasetNotFoundError, match=r"PROBMF_DATA_DIR is not set") as info:
        load_movielens("ml-100k", download=False)
    assert "downloading is turned off" in str(info.value)


# ---- safe extraction ----------------------------------------------------------------------


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-100k/../../evil.txt", "/tmp/probmf-evil-abs.txt"])
def test_zip_slip_is_refused(tmp_path, evil):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t1\n")
        zf.writestr(zipfile.ZipInfo(evil), "gotcha")
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    with zipfile.ZipFile(zpath) as zf, pytest.raises(UnsafeArchiveError, match="outside"):
        ml._safe_extract(zf, dest)
    assert list(dest.iterdir()) == []  # nothing is written before every member is checked
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/probmf-evil-abs.txt").exists()


def test_symlink_member_is_refused(tmp_path):
    zpath = tmp_path / "link.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        info = zipfile.ZipInfo("ml-100k/u.data")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with zipfile.ZipFile(zpath) as zf, pytest.raises(UnsafeArchiveError, match="symbolic link"):
        ml._safe_extract(zf, tmp_path / "dest")


def test_zip_slip_in_download_leaves_nothing(tmp_path, monkeypatch, isolated):
    zpath = tmp_path / "evil.zip"
    digest = make_zip(zpath, {"ml-100k/u.data": "1\t1\t5\t1\n", "../../escaped.txt": "gotcha"})
    monkeypatch.setitem(ml._SHA256, "ml-100k", digest)
    serve(monkeypatch, zpath, [])
    with pytest.raises(UnsafeArchiveError):
        load_movielens("ml-100k")
    assert not (isolated / "ml-100k").exists()
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "xdg-cache" / "escaped.txt").exists()
    assert sorted(p.name for p in isolated.iterdir()) == ["ml-100k.zip"]


def test_archive_without_ratings_file(tmp_path, monkeypatch, isolated):
    zpath = tmp_path / "odd.zip"
    monkeypatch.setitem(ml._SHA256, "ml-100k", make_zip(zpath, {"other/u.data": "1\t1\t5\t1\n"}))
    serve(monkeypatch, zpath, [])
    with pytest.raises(DatasetNotFoundError, match=r"has no ml-100k/u\.data"):
        load_movielens("ml-100k")
    assert not (isolated / "ml-100k").exists()


def test_pinned_hashes_look_like_sha256():
    assert set(ml._SHA256) <= set(ml.DATASETS)
    for digest in ml._SHA256.values():
        assert len(digest) == 64 and int(digest, 16) >= 0


# ---- the real MovieLens 100K (skipped without $PROBMF_DATA_DIR/ml-100k) ------------------


def _use_real(ml100k_dir, monkeypatch, *files):
    """Point $PROBMF_DATA_DIR back at the real data (``ml100k_dir`` skips when it is absent)."""
    missing = [f for f in files if not (ml100k_dir / f).is_file()]
    if missing and all(f.startswith(("ua.", "ub.")) for f in missing):
        # Not every copy of ML-100K ships ua/ub: their absence is not missing data (conftest).
        pytest.skip(f"{', '.join(missing)} not in {ml100k_dir} (the optional ua/ub split files)")
    if missing:
        pytest.skip(f"MovieLens 100K files {', '.join(missing)} not in {ml100k_dir}")
    monkeypatch.setenv("PROBMF_DATA_DIR", str(ml100k_dir.parent))


@pytest.mark.parametrize("fold", ["u1", "u2", "u3", "u4", "u5"])
def test_real_ml100k_folds(ml100k_dir, monkeypatch, fold):
    _use_real(ml100k_dir, monkeypatch, f"{fold}.base", f"{fold}.test")
    train, test = load_split("ml-100k", fold)
    assert train.source == str(ml100k_dir / f"{fold}.base")
    assert (len(train), len(test)) == (80_000, 20_000)
    assert test.user_ids == train.user_ids and test.item_ids == train.item_ids
    assert train.values.min() >= 1 and train.values.max() <= 5


@pytest.mark.parametrize("fold", ["ua", "ub"])
def test_real_ml100k_ua_ub(ml100k_dir, monkeypatch, fold):
    _use_real(ml100k_dir, monkeypatch, f"{fold}.base", f"{fold}.test")
    train, test = load_split("ml-100k", fold)
    assert (len(train), len(test)) == (90_570, 9_430)
    # ua/ub hold out exactly 10 ratings of every one of the 943 users
    np.testing.assert_array_equal(np.bincount(test.users, minlength=943), 10)


def test_real_ml100k_cold_items(ml100k_dir, monkeypatch):
    _use_real(ml100k_dir, monkeypatch, "u1.base", "u1.test")
    train, test = load_split("ml-100k", "u1")
    raw_test = load_movielens("ml-100k", split="u1.test")
    cold = ~np.isin(raw_test.raw_items(), train.item_ids.raw)
    assert cold.any()
    np.testing.assert_array_equal(test.items == -1, cold)
    assert np.all(test.users >= 0)  # every u1 test user also rates in u1.base


def test_real_ml100k_full(ml100k_dir, monkeypatch):
    _use_real(ml100k_dir, monkeypatch, "u.data", "u.item")
    r = load_movielens("ml-100k")
    assert (len(r), r.num_users, r.num_items) == (100_000, 943, 1_682)
    titles = load_titles("ml-100k")
    assert len(titles) == 1_682 and titles[1] == "Toy Story (1995)"
