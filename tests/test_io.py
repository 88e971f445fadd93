"""Tests for probmf.data.io: reading and writing ratings files, and IdMap round trips."""

import gzip
import io
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from probmf.data import IdMap, Ratings, RatingsFileError, read_ratings, write_ratings
from probmf.data.io.parse import _ReplacingReader
from probmf.data.io.sniff import _UNIT_SEP


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def _sample(*, string_ids=False, timestamps=True):
    users = ["u7", "u3", "u7", "u9", "u3"] if string_ids else [7, 3, 7, 9, 3]
    items = ["b", "a", "a", "c", "c"] if string_ids else [20, 10, 10, 30, 30]
    values = [4.5, 3.0, 0.5, 5.0, 2.0]
    ts = [100, 200, 300, 400, 500] if timestamps else None
    return Ratings.from_raw(users, items, values, ts)


def _assert_same(a: Ratings, b: Ratings):
    np.testing.assert_array_equal(a.raw_users(), b.raw_users())
    np.testing.assert_array_equal(a.raw_items(), b.raw_items())
    np.testing.assert_array_equal(a.values, b.values)
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids


# ---- formats ------------------------------------------------------------------------------


def test_movielens_csv_with_header(tmp_path):
    path = _write(
        tmp_path,
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n",
    )
    r = read_ratings(path)
    assert len(r) == 2 and r.source == str(path)
    np.testing.assert_array_equal(r.raw_items(), [31, 1029])
    np.testing.assert_array_equal(r.values, [2.5, 3.0])
    np.testing.assert_array_equal(r.timestamps, [1260759144, 1260759179])
    assert r.users.dtype == np.int32 and r.values.dtype == np.float32 and r.timestamps.dtype == np.int64


def test_movielens_tab_without_header(tmp_path):
    path = _write(tmp_path, "u1.base", "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n")
    r = read_ratings(path)
    assert (r.num_users, r.num_items, len(r)) == (2, 2, 3)
    np.testing.assert_array_equal(r.values, [5, 3, 4])


def test_double_colon_dat(tmp_path):
    path = _write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    r = read_ratings(path)
    np.testing.assert_array_equal(r.raw_users(), [1, 1, 2])
    np.testing.assert_array_equal(r.raw_items(), [1193, 661, 1193])
    np.testing.assert_array_equal(r.timestamps, [978300760, 978302109, 978298413])


def test_double_colon_split_across_read_chunks():
    text = b"".join(b"%d::%d::%d.5::%d\n" % (u, u * 7, u % 5, 10**9 + u) for u in range(200))
    for chunk_size in (1, 2, 3, 5, 64):
        reader = io.BufferedReader(_ReplacingReader(io.BytesIO(text), b"::", chunk_size), 7)
        assert reader.read() == text.replace(b"::", _UNIT_SEP.encode())


@pytest.mark.parametrize(
    "sep, text",
    [
        (";", "1;2;3\n4;5;1\n"),
        ("|", "1|2|3\n4|5|1\n"),
        ("ws", "1 2 3\n  4    5 1\n"),
        ("ws", "1\t 2  3\n4 5 1\n"),
    ],
)
def test_separator_detection(tmp_path, sep, text):
    r = read_ratings(_write(tmp_path, "r.txt", text))
    np.testing.assert_array_equal(r.raw_users(), [1, 4])
    np.testing.assert_array_equal(r.values, [3, 1])
    assert r.timestamps is None


def test_explicit_separator_and_columns(tmp_path):
    path = _write(tmp_path, "r.txt", "x#1#10#4#999\ny#2#20#5#998\n")
    r = read_ratings(path, sep="#", columns=(1, 2, 3, 4))
    np.testing.assert_array_equal(r.raw_users(), [1, 2])
    np.testing.assert_array_equal(r.timestamps, [999, 998])
    r = read_ratings(_write(tmp_path, "multi.txt", "1<>10<>4\n2<>20<>5\n"), sep="<>")
    np.testing.assert_array_equal(r.raw_items(), [10, 20])


def test_columns_by_header_name(tmp_path):
    path = _write(tmp_path, "books.csv", "isbn,reader,stars\nb1,7,4\nb2,8,2\n")
    r = read_ratings(path, columns=("reader", "isbn", "stars"))
    np.testing.assert_array_equal(r.raw_users(), [7, 8])
    np.testing.assert_array_equal(r.raw_items(), ["b1", "b2"])
    with pytest.raises(RatingsFileError, match=r"books\.csv, line 1: no column named 'nope'"):
        read_ratings(path, columns=("reader", "nope", "stars"))


def test_header_names_in_any_order(tmp_path):
    path = _write(tmp_path, "r.csv", "timestamp,rating,movieId,userId\n5,4.0,10,1\n")
    r = read_ratings(path)
    assert r.raw_users()[0] == 1 and r.raw_items()[0] == 10 and r.values[0] == 4 and r.timestamps[0] == 5


@pytest.mark.parametrize("header", ["infer", True])
def test_header_present(tmp_path, header):
    r = read_ratings(_write(tmp_path, "r.csv", "userId,movieId,rating\n1,2,3\n"), header=header)
    assert len(r) == 1


@pytest.mark.parametrize("header", ["infer", False])
def test_header_absent(tmp_path, header):
    r = read_ratings(_write(tmp_path, "r.csv", "1,2,3\n4,5,1\n"), header=header)
    assert len(r) == 2


def test_unknown_header_needs_header_true(tmp_path):
    path = _write(tmp_path, "r.csv", "a;b;c\n1;2;3\n")
    with pytest.raises(RatingsFileError, match=r"line 1: rating 'c' is not a number .*header=True"):
        read_ratings(path)
    assert len(read_ratings(path, header=True)) == 1


@pytest.mark.parametrize("text", ["\ufeffuserId,movieId,rating\n1,2,3\n", "\ufeff1,2,3\n"])
def test_utf8_bom_is_skipped(tmp_path, text):
    r = read_ratings(_write(tmp_path, "bom.csv", text))
    assert r.raw_users()[0] == 1 and len(r) == 1


def test_bom_with_double_colon(tmp_path):
    r = read_ratings(_write(tmp_path, "bom.dat", "\ufeff1::2::3::4\n"))
    assert r.raw_users()[0] == 1 and r.timestamps[0] == 4


def test_string_ids_are_kept(tmp_path):
    path = _write(tmp_path, "s.csv", "user,item,rating\nalice,The Matrix,5\nbob,NA,2\nalice,42,3\n")
    r = read_ratings(path)
    np.testing.assert_array_equal(r.raw_users(), ["alice", "bob", "alice"])
    np.testing.assert_array_equal(r.raw_items(), ["The Matrix", "NA", "42"])


def test_id_type(tmp_path):
    path = _write(tmp_path, "r.csv", "007,0001,4\n7,B01,3\n")
    with pytest.raises(RatingsFileError, match=r"line 2: item id 'B01' is not an integer"):
        read_ratings(path)  # "auto": the first item id is a number, so all must be
    r = read_ratings(path, id_type="str")
    np.testing.assert_array_equal(r.raw_users(), ["007", "7"])
    np.testing.assert_array_equal(r.raw_items(), ["0001", "B01"])
    with pytest.raises(RatingsFileError, match=r"line 1: user id 'alice' is not an integer"):
        read_ratings(_write(tmp_path, "s.csv", "alice,1,3\n"), id_type="int")
    with pytest.raises(ValueError, match="id_type"):
        read_ratings(path, id_type="float")


def test_blank_lines_and_crlf(tmp_path):
    path = _write(tmp_path, "r.csv", "\r\n1,2,3\r\n\r\n   \r\n4,5,1\r\n\r\n")
    r = read_ratings(path)
    np.testing.assert_array_equal(r.raw_users(), [1, 4])


def test_latin1(tmp_path):
    path = _write(tmp_path, "r.csv", "Zoë,Amélie,4\n", encoding="latin-1")
    r = read_ratings(path, encoding="latin-1")
    assert r.raw_users()[0] == "Zoë" and r.raw_items()[0] == "Amélie"


def test_gzip(tmp_path):
    path = tmp_path / "r.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"userId,movieId,rating\n1,2,3\n4,5,1\n")
    assert len(read_ratings(path)) == 2


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_ratings(tmp_path / "nope.csv")


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, value, fragment",
    [
        ("1,2,3,4\n1,2,3\n", 2, "1,2,3", "expected 4 fields separated by ',', found 3"),
        ("1,2,3,4\n\n1,2,3,4,5\n", 3, "1,2,3,4,5", "expected 4 fields separated by ',', found 5"),
        ("1::2::3::4\n1::2::3\n", 2, "1::2::3", "expected 4 fields separated by '::', found 3"),
        ("1\t2\t3\n1\t3\t4\t5\n", 2, "1\t3\t4\t5", "found 4"),
        ("userId,movieId,rating\n1,2,3\n1,3,abc\n", 3, "abc", "rating 'abc' is not a number"),
        ("1,2,3\n1,3,nan\n", 2, "nan", "rating 'nan' is not finite"),
        ("1,2,3\n1,3,NaN\n", 2, "NaN", "is not finite"),
        ("1,2,3.5\n1,3,inf\n", 2, float("inf"), "rating inf is not finite"),
        ("1,2,3\n1,3,-Infinity\n", 2, None, "is not finite"),
        ("1,2,3\n1,3,1e999\n", 2, None, "is not finite"),
        ("1,2,3\n1,3,\n", 2, "", "empty rating field"),
        ("1,2,3\n1,,3\n", 2, "", "empty item field"),
        ("1,2,3\n-1,3,4\n", 2, -1, "user id -1 is negative"),
        ("1,2,3\n1,-3,4\n", 2, -3, "item id -3 is negative"),
        ("1,2,3\n1.5,3,4\n", 2, 1.5, "user id 1.5 is not an integer"),
        ("1,2,3\nx,3,4\n", 2, "x", "user id 'x' is not an integer"),
        ("1,2,3\n2,3,4\n3,4.25,4\n", 3, 4.25, "item id 4.25 is not an integer"),
        ("1,2,3,4\n1,3,4,x\n", 2, "x", "timestamp 'x' is not an integer"),
        ("1,2,3,4\n1,3,4,5.5\n", 2, 5.5, "timestamp 5.5 is not an integer"),
    ],
)
def test_bad_values_name_file_line_and_value(tmp_path, text, line, value, fragment):
    path = _write(tmp_path, "bad.csv", text)
    with pytest.raises(RatingsFileError) as info:
        read_ratings(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{path}, line {line}: ")
    assert fragment in str(err)
    assert err.path == str(path) and err.line == line
    if value is not None:
        assert err.value == value


def test_earliest_bad_line_is_reported(tmp_path):
    # line 3 has a bad rating and line 2 a bad user: the earlier one wins
    path = _write(tmp_path, "bad.csv", "1,2,3\nx,3,4\n1,4,abc\n")
    with pytest.raises(RatingsFileError, match="line 2: user id 'x'"):
        read_ratings(path)


def test_line_numbers_count_header_and_blank_lines(tmp_path):
    path = _write(tmp_path, "bad.csv", "\n\nuserId,movieId,rating\n\n1,2,3\n\n1,3,oops\n")
    with pytest.raises(RatingsFileError) as info:
        read_ratings(path)
    assert info.value.line == 7 and "line 7: rating 'oops'" in str(info.value)


def test_rating_scale(tmp_path):
    path = _write(tmp_path, "r.csv", "1,2,3\n1,3,5.5\n")
    assert len(read_ratings(path)) == 2
    with pytest.raises(RatingsFileError, match=r"r\.csv, line 2: rating 5\.5 is outside the scale \[1, 5\]") as info:
        read_ratings(path, rating_scale=(1, 5))
    assert info.value.value == 5.5
    with pytest.raises(ValueError, match="rating_scale"):
        read_ratings(path, rating_scale=(5, 1))


@pytest.mark.parametrize("text", ["", "\n\n  \n", "userId,movieId,rating\n", "userId,movieId,rating\n\n\n"])
def test_no_ratings(tmp_path, text):
    path = _write(tmp_path, "empty.csv", text)
    with pytest.raises(RatingsFileError, match=r"empty\.csv: no ratings") as info:
        read_ratings(path)
    assert info.value.line is None


def test_too_few_columns(tmp_path):
    with pytest.raises(RatingsFileError, match=r"line 1: expected at least 3 fields"):
        read_ratings(_write(tmp_path, "two.csv", "1,2\n3,4\n"))


def test_undecodable_text(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"1,2,3\n1,\xff\xfe,4\n")
    with pytest.raises(RatingsFileError, match=r"bin\.csv, line 2: not valid utf-8"):
        read_ratings(path)


# ---- duplicates ---------------------------------------------------------------------------


DUPS = "userId,movieId,rating,timestamp\n1,10,1,100\n2,10,2,200\n1,10,4,300\n1,20,5,400\n1,10,3,500\n"


def test_duplicates_error_names_pair_and_both_lines(tmp_path):
    path = _write(tmp_path, "dups.csv", DUPS)
    with pytest.raises(RatingsFileError) as info:
        read_ratings(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}, line 4: duplicate rating for user 1, item 10")
    assert "line 2" in msg and info.value.line == 4 and info.value.value == (1, 10)


def test_duplicates_last(tmp_path):
    r = read_ratings(_write(tmp_path, "dups.csv", DUPS), duplicates="last")
    np.testing.assert_array_equal(r.raw_users(), [2, 1, 1])
    np.testing.assert_array_equal(r.raw_items(), [10, 20, 10])
    np.testing.assert_array_equal(r.values, [2, 5, 3])
    np.testing.assert_array_equal(r.timestamps, [200, 400, 500])


def test_duplicates_mean(tmp_path):
    r = read_ratings(_write(tmp_path, "dups.csv", DUPS), duplicates="mean")
    np.testing.assert_array_equal(r.values, np.float32([2, 5, 8 / 3]))
    np.testing.assert_array_equal(r.timestamps, [200, 400, 500])
    r.to_csr()  # no duplicate pairs remain


def test_duplicates_bad_policy(tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        read_ratings(_write(tmp_path, "r.csv", "1,2,3\n"), duplicates="first")


# ---- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("timestamps", [False, True])
@pytest.mark.parametrize("name", ["r.csv", "r.parquet"])
def test_write_read_round_trip(tmp_path, name, string_ids, timestamps):
    r = _sample(string_ids=string_ids, timestamps=timestamps)
    path = tmp_path / name
    write_ratings(r, path)
    back = read_ratings(path)
    _assert_same(r, back)
    assert back.source == str(path)
    if name.endswith(".csv"):
        head = path.read_text().splitlines()[0]
        assert head == ("userId,movieId,rating,timestamp" if timestamps else "userId,movieId,rating")


@pytest.mark.parametrize("sep", ["\t", "::", ";"])
def test_write_read_round_trip_separators(tmp_path, sep):
    r = _sample()
    path = tmp_path / "r.dat"
    write_ratings(r, path, sep=sep, header=False)
    assert path.read_text().splitlines()[0] == sep.join(["7", "20", "4.5", "100"])
    _assert_same(r, read_ratings(path))


def test_round_trip_fractional_ratings(tmp_path):
    values = np.float32([0.1, 1 / 3, 2.675, 4.999999])
    r = Ratings.from_raw([1, 2, 3, 4], [1, 1, 1, 1], values)
    write_ratings(r, tmp_path / "r.csv")
    np.testing.assert_array_equal(read_ratings(tmp_path / "r.csv").values, values)


def test_scipy_round_trip(tmp_path):
    r = _sample(timestamps=False)
    coo = r.to_coo()
    back = Ratings.from_scipy(coo, user_ids=r.user_ids, item_ids=r.item_ids)
    _assert_same(r, back)
    csr = r.to_csr()
    assert isinstance(csr, sp.csr_matrix) and csr.nnz == len(r)
    back = Ratings.from_scipy(csr, user_ids=r.user_ids, item_ids=r.item_ids)
    assert (back.to_csr() != csr).nnz == 0
    write_ratings(back, tmp_path / "r.csv")
    assert (read_ratings(tmp_path / "r.csv").to_csr() != csr).nnz == 0


def test_dataframe_round_trip(tmp_path):
    r = _sample(string_ids=True)
    df = r.to_dataframe()
    assert list(df.columns) == ["userId", "movieId", "rating", "timestamp"]
    _assert_same(r, Ratings.from_dataframe(df))
    df.to_csv(tmp_path / "r.csv", index=False)
    _assert_same(r, read_ratings(tmp_path / "r.csv"))


def test_parquet_checks_name_the_row(tmp_path):
    df = pd.DataFrame({"userId": [1, 2, 3], "movieId": [1, 1, 1], "rating": [3.0, np.nan, 2.0]})
    path = tmp_path / "r.parquet"
    df.to_parquet(path)
    with pytest.raises(RatingsFileError, match=r"r\.parquet, row 2: missing rating") as info:
        read_ratings(path)
    assert info.value.line == 2
    df["rating"] = [3.0, 1.0, np.inf]
    df.to_parquet(path)
    with pytest.raises(RatingsFileError, match=r"row 3: rating inf is not finite"):
        read_ratings(path)


def test_parquet_custom_columns(tmp_path):
    df = pd.DataFrame({"who": ["a", "b"], "what": [5, 6], "score": [1.0, 2.0]})
    df.to_parquet(tmp_path / "r.pq")
    r = read_ratings(tmp_path / "r.pq", columns=("who", "what", "score"))
    np.testing.assert_array_equal(r.raw_users(), ["a", "b"])
    with pytest.raises(RatingsFileError, match="no column named 'x'"):
        read_ratings(tmp_path / "r.pq", columns=("who", "x", "score"))


def test_damaged_parquet(tmp_path):
    path = _write(tmp_path, "r.parquet", "not parquet")
    with pytest.raises(RatingsFileError, match=r"r\.parquet: cannot read as Parquet"):
        read_ratings(path)


# ---- atomic writes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r.csv", "r.parquet"])
def test_failed_write_keeps_existing_file(tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_bytes(b"precious")

    def broken(self, f, *args, **kwargs):
        f.write("1,2," if isinstance(f, io.TextIOBase) else b"1,2,")  # part written, then it fails
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_ratings(_sample(), path)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == [name]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(self, f, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        write_ratings(_sample(), tmp_path / "r.csv")
    assert os.listdir(tmp_path) == []


def test_write_refuses_unknown_ids(tmp_path):
    train = _sample()
    other = Ratings.from_raw([1000], [20], [3.0]).reindex(train.user_ids, train.item_ids)
    with pytest.raises(ValueError, match="unknown ids"):
        write_ratings(other, tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()


# ---- property tests -----------------------------------------------------------------------

int_ids = st.lists(st.integers(0, 2**40), max_size=40)
str_ids = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6), max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.one_of(int_ids, str_ids))
def test_idmap_encode_index_round_trip(raw):
    raw = np.asarray(raw) if raw else np.asarray([], dtype=np.int64)
    id_map, index = IdMap.encode(raw)
    assert len(id_map) == len(set(raw.tolist()))
    assert index.dtype == np.int32
    np.testing.assert_array_equal(id_map.raw[index], raw)
    np.testing.assert_array_equal(id_map.index(raw), index)
    np.testing.assert_array_equal(id_map.index(id_map.raw), np.arange(len(id_map)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=30), st.lists(st.integers(0, 1000), max_size=10))
def test_idmap_unknown_ids_are_minus_one(known, queries):
    id_map, _ = IdMap.encode(np.asarray(known, dtype=np.int64))
    got = id_map.index(np.asarray(queries, dtype=np.int64))
    for q, g in zip(queries, got, strict=True):
        assert (g == -1) == (q not in known)
        if g != -1:
            assert id_map.raw[g] == q


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),
            st.one_of(st.integers(0, 50), st.text("abcxyz", min_size=1, max_size=4)),
            st.sampled_from([0.5, 1.0, 2.5, 3.0, 5.0]),
        ),
        min_size=1,
        max_size=30,
        unique_by=lambda t: (t[0], str(t[1])),
    ),
    st.sampled_from([",", "\t", "::", ";"]),
)
def test_text_round_trip_property(tmp_path_factory, rows, sep):
    items = [str(t[1]) for t in rows]
    if any(not s.isdigit() for s in items):
        # a numeric-looking first item would make the whole column numeric
        items = [f"i{s}" for s in items]
    else:
        items = [int(s) for s in items]
    r = Ratings.from_raw([t[0] for t in rows], items, [t[2] for t in rows])
    path = tmp_path_factory.mktemp("rt") / "r.txt"
    write_ratings(r, path, sep=sep, header=bool(len(rows) % 2))
    _assert_same(r, read_ratings(path))
