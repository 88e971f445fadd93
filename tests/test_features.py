"""Tests for probmf.data.features (attribute tables -> design matrices aligned with ratings)
and the MovieLens side files of probmf.data.movielens.load_features."""

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from probmf.data import IdMap, RatingsFileError, load_movielens
from probmf.data import movielens as ml
from probmf.data.features import (
    MissingFeaturesWarning,
    align,
    design_matrix,
    from_columns,
    read_features,
    row_of,
)
from probmf.data.movielens import load_features

S2, S3 = 1 / np.sqrt(2), 1 / np.sqrt(3)


def write(tmp_path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def dense(table) -> dict:
    """name -> column of the table's matrix, as a list."""
    x = table.matrix.toarray()
    return {name: x[:, j].tolist() for j, name in enumerate(table.names)}


# ---- each kind on tiny files --------------------------------------------------------------


def test_numeric_column_standardised_exactly(tmp_path):
    # present values 20, 30: mean 25, sd 5 -> -1, 1; the missing one -> 0
    t = read_features(write(tmp_path, "u.csv", "userId,age\n1,20\n2,30\n3,\n"))
    assert t.names == ("age",) and t.groups == ("age",)
    assert dense(t) == {"age": [-1.0, 1.0, 0.0]}
    assert t.matrix.format == "csr" and t.matrix.dtype == np.float64 and t.matrix.shape == (3, 1)
    assert t.ids.dtype == np.int64 and t.ids.tolist() == [1, 2, 3]
    assert t.source == str(tmp_path / "u.csv")


def test_categorical_one_hot_and_missing_value(tmp_path):
    t = read_features(write(tmp_path, "u.csv", "user_id,gender,occupation\n7,M,writer\n3,F,\n5,M,artist\n"))
    assert t.names == ("gender=F", "gender=M", "occupation=artist", "occupation=writer")
    assert t.groups == ("gender", "gender", "occupation", "occupation")
    np.testing.assert_array_equal(t.matrix.toarray(), [[0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]])
    assert t.ids.tolist() == [7, 3, 5]  # file order


def test_multilabel_multi_hot_scaled_to_unit_row_norm(tmp_path):
    text = "movieId,tags\n1,Action|Comedy\n2,Drama\n3,(no genres listed)\n4,Action|Comedy|Drama\n5,\n"
    t = read_features(write(tmp_path, "m.csv", text))
    assert t.names == ("tags=Action", "tags=Comedy", "tags=Drama") and set(t.groups) == {"tags"}
    np.testing.assert_allclose(t.matrix.toarray(), [[S2, S2, 0], [0, 0, 1], [0, 0, 0], [S3, S3, S3], [0, 0, 0]])
    np.testing.assert_allclose(np.linalg.norm(t.matrix.toarray(), axis=1), [1, 1, 0, 1, 0])


def test_repeated_label_counts_once(tmp_path):
    t = read_features(write(tmp_path, "m.csv", "id,g\n1,A|A|B\n"))
    np.testing.assert_allclose(t.matrix.toarray(), [[S2, S2]])


def test_kinds_override_keeps_zip_codes_as_text(tmp_path):
    path = write(tmp_path, "u.csv", "id,zip\n1,01234\n2,98765\n3,01234\n")
    assert read_features(path).names == ("zip",)  # inferred numeric
    t = read_features(path, kinds={"zip": "categorical"})
    assert t.names == ("zip=01234", "zip=98765")
    np.testing.assert_array_equal(t.matrix.toarray(), [[1, 0], [0, 1], [1, 0]])


def test_mixed_kinds_in_file_order(tmp_path):
    t = read_features(write(tmp_path, "u.tsv", "age\tid\tgender\n10\t1\tF\n30\t2\tM\n"))
    assert t.ids.tolist() == [1, 2]  # "id" is taken for the id column though not first
    assert t.names == ("age", "gender=F", "gender=M")
    np.testing.assert_array_equal(t.matrix.toarray(), [[-1, 1, 0], [1, 0, 1]])


@pytest.mark.parametrize("sep", ["\t", "|", ";", "::"])
def test_separator_is_sniffed(tmp_path, sep):
    text = sep.join(["id", "a", "b"]) + "\n" + sep.join(["x1", "u", "2"]) + "\n" + sep.join(["x2", "v", "4"]) + "\n"
    t = read_features(write(tmp_path, "f.txt", text))
    assert t.ids.tolist() == ["x1", "x2"] and t.ids.dtype.kind == "U"
    assert t.names == ("a=u", "a=v", "b")


def test_explicit_id_column_and_columns_choose_and_order(tmp_path):
    path = write(tmp_path, "f.csv", "a,key,b,c\nx,10,1,p\ny,20,2,q\n")
    t = read_features(path, id_column="key", columns=["c", "a"])
    assert t.ids.tolist() == [10, 20] and t.names == ("c=p", "c=q", "a=x", "a=y")
    t = read_features(path)  # no known id name: the first column
    assert t.ids.tolist() == ["x", "y"] and t.groups == ("key", "b", "c", "c")


def test_gzip_and_latin1(tmp_path):
    path = tmp_path / "f.csv.gz"
    path.write_bytes(gzip.compress("id,city\n1,Köln\n2,Zürich\n".encode("latin-1")))
    assert read_features(path, encoding="latin-1").names == ("city=Köln", "city=Zürich")


def test_from_columns_encodes_as_a_file_is():
    t = from_columns(["b", "a"], {"n": [1.0, np.nan], "g": [["x", "y"], None], "c": ["u", ""]}, source="mem")
    assert t.names == ("n", "g=x", "g=y", "c=u") and t.source == "mem"
    # one present numeric value is a constant column: all zero
    np.testing.assert_allclose(t.matrix.toarray(), [[0, S2, S2, 1], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"column 'n' has 1 values for 2 ids"):
        from_columns([1, 2], {"n": [1]})
    with pytest.raises(RatingsFileError, match=r"columns, row 1: id 1 appears twice \(also on row 0\)"):
        from_columns([1, 1], {"n": [1, 2]})


def test_kinds_must_name_columns_and_kinds(tmp_path):
    path = write(tmp_path, "f.csv", "id,a\n1,x\n")
    with pytest.raises(ValueError, match=r"kinds names \['b'\]"):
        read_features(path, kinds={"b": "numeric"})
    with pytest.raises(ValueError, match=r"a kind is one of numeric, categorical, multilabel, title"):
        read_features(path, kinds={"a": "ordinal"})


# ---- standardisation -----------------------------------------------------------------------


def test_standardisation_mean_zero_sd_one(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 10.0, size=300)
    text = "id,v,flat\n" + "".join(f"{k},{float(v)!r},3.5\n" for k, v in enumerate(values))
    t = read_features(write(tmp_path, "f.csv", text))
    x = t.matrix.toarray()
    np.testing.assert_allclose(x[:, 0].mean(), 0, atol=1e-12)
    np.testing.assert_allclose(x[:, 0].std(), 1, rtol=1e-12)
    np.testing.assert_allclose(x[:, 0], (values - values.mean()) / values.std(), rtol=1e-12)
    np.testing.assert_array_equal(x[:, 1], 0)  # a constant column carries nothing
    assert t.matrix[:, 1].nnz == 0  # and stores nothing


def test_standardisation_over_present_values_only(tmp_path):
    t = read_features(write(tmp_path, "f.csv", "id,v\n1,1\n2,\n3,2\n4,3\n5,\n"))
    x = t.matrix.toarray()[:, 0]
    present = x[[0, 2, 3]]
    np.testing.assert_allclose([present.mean(), present.std()], [0, 1], atol=1e-12)
    np.testing.assert_array_equal(x[[1, 4]], 0)


# ---- movie titles ----------------------------------------------------------------------------

MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    "140,Nosferatu (1922) ,Horror\n"
    "171011,Planet Earth II (2016),(no genres listed)\n"
    "1800,Sherlock (2010\u20132017),Crime\n"
    "300,Untitled,Drama\n"
)


def test_movies_csv_title_gives_year_and_decade(tmp_path):
    t = read_features(write(tmp_path, "movies.csv", MOVIES_CSV))
    assert "title" not in t.groups and not any(n.startswith("title") for n in t.names)
    assert t.groups[:5] == ("year", "decade", "decade", "decade", "genres")
    assert t.names[:5] == ("year", "decade=1920s", "decade=1990s", "decade=2010s", "genres=Adventure")
    years = np.array([1995, 1995, 1922, 2016, 2010])
    col = dense(t)
    np.testing.assert_allclose(col["year"], [*((years - years.mean()) / years.std()), 0])  # no year: 0
    assert col["decade=1990s"] == [1, 1, 0, 0, 0, 0] and col["decade=2010s"] == [0, 0, 0, 1, 1, 0]
    genre = t.matrix.toarray()[:, [k for k, g in enumerate(t.groups) if g == "genres"]]
    np.testing.assert_allclose(np.linalg.norm(genre, axis=1), [1, 1, 1, 0, 1, 1])
    assert col["genres=Comedy"] == pytest.approx([1 / np.sqrt(5), S3, 0, 0, 0, 0])


def test_title_kind_can_be_overridden(tmp_path):
    t = read_features(write(tmp_path, "movies.csv", MOVIES_CSV), columns=["title"], kinds={"title": "categorical"})
    assert len(t.names) == 6 and t.names[0] == "title=American President, The (1995)"


# ---- errors name the file and the line -------------------------------------------------------


def raises_at(path: Path, line: int, match: str, **kwargs) -> RatingsFileError:
    with pytest.raises(RatingsFileError, match=match) as info:
        read_features(path, **kwargs)
    assert f"{path}, line {line}:" in str(info.value)
    assert (info.value.path, info.value.line) == (str(path), line)
    return info.value


def test_error_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path, "u.csv", "id,g\n1,a\n\n2,b\n1,c\n")
    err = raises_at(path, 5, r"id 1 appears twice \(also on line 2\)")
    assert err.value == "1"


def test_error_duplicate_integer_id_written_two_ways(tmp_path):
    raises_at(write(tmp_path, "u.csv", "id,g\n7,a\n007,b\n"), 3, r"id 7 appears twice \(also on line 2\)")


def test_error_wrong_number_of_fields(tmp_path):
    path = write(tmp_path, "u.csv", "id,g,h\n1,a,b\n2,a\n")
    raises_at(path, 3, r"expected 3 fields separated by ',', found 2: '2,a'")


def test_error_unparseable_number_in_forced_numeric_column(tmp_path):
    path = write(tmp_path, "u.csv", "id,age\n1,20\n2,twenty\n")
    assert read_features(path).names == ("age=20", "age=twenty")  # inferred: categorical
    raises_at(path, 3, r"age value 'twenty' is not a finite number", kinds={"age": "numeric"})
    raises_at(write(tmp_path, "v.csv", "id,age\n1,inf\n"), 2, r"'inf' is not a finite number", kinds={"age": "numeric"})


def test_error_empty_file(tmp_path):
    for text in ("", "\n  \n"):
        path = write(tmp_path, "empty.csv", text)
        with pytest.raises(RatingsFileError, match=r"empty\.csv: no rows \(the file is empty\)"):
            read_features(path)


def test_error_header_only(tmp_path):
    path = write(tmp_path, "head.csv", "\nid,g\n")
    with pytest.raises(RatingsFileError, match=r"head\.csv: no rows \(only the header, line 2\)") as info:
        read_features(path)
    assert info.value.line == 2


def test_error_missing_id_column(tmp_path):
    path = write(tmp_path, "u.csv", "id,g\n1,a\n")
    raises_at(path, 1, r"header \['id', 'g'\] has no id column 'userId'", id_column="userId")
    raises_at(path, 1, r"feature column 'h' is not in the header", columns=["h"])
    raises_at(path, 1, r"feature column 'id' is the id column", columns=["id", "g"])


def test_error_empty_id(tmp_path):
    raises_at(write(tmp_path, "u.csv", "id,g\n1,a\n,b\n"), 3, r"no id \(the id field is empty\)")


def test_error_repeated_header_name(tmp_path):
    raises_at(write(tmp_path, "u.csv", "id,g,g\n1,a,b\n"), 1, r"repeats the column name 'g'")


def test_error_undecodable_text(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes("id,city\n1,Köln\n".encode("latin-1"))
    raises_at(path, 2, r"not valid utf-8 text")


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"feature file not found"):
        read_features(tmp_path / "nope.csv")


# ---- aligning with ratings -------------------------------------------------------------------


def users_table(tmp_path):
    # ids 30, 10, 20 in file order; 99 is not in the ratings
    return read_features(write(tmp_path, "users.csv", "userId,g\n30,c\n10,a\n20,b\n99,z\n"))


def test_align_rows_follow_dense_indices_and_zero_rows_for_missing(tmp_path):
    t = users_table(tmp_path)
    id_map = IdMap(np.array([10, 20, 25, 30], dtype=np.int64))  # 25 has no features
    x, missing = align(t, id_map)
    assert missing == 1 and x.shape == (4, 4) and x.format == "csr"
    assert t.names == ("g=a", "g=b", "g=c", "g=z")
    np.testing.assert_array_equal(x.toarray(), [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])


def test_align_string_ids_and_int_map(tmp_path):
    t = read_features(write(tmp_path, "f.csv", "id,g\nb,1\na,2\n"), kinds={"g": "categorical"})
    x, missing = align(t, IdMap(np.array(["a", "b", "c"])))
    assert missing == 1
    np.testing.assert_array_equal(x.toarray(), [[0, 1], [1, 0], [0, 0]])
    x, missing = align(users_table(tmp_path), IdMap(np.array(["10", "x"])))  # text ids of an int table
    assert missing == 1 and x.toarray()[0].tolist() == [1, 0, 0, 0]


def test_align_with_ratings_from_a_file(tmp_path):
    from probmf.data import read_ratings

    ratings = read_ratings(write(tmp_path, "r.csv", "userId,movieId,rating\n20,1,4\n10,1,3\n30,2,5\n"))
    x, missing = align(users_table(tmp_path), ratings.user_ids)
    assert missing == 0
    np.testing.assert_array_equal(x.toarray()[:, :3], np.eye(3))


def test_design_matrix_warns_with_count_and_file(tmp_path):
    t = users_table(tmp_path)
    id_map = IdMap(np.array([1, 2, 10], dtype=np.int64))
    with pytest.warns(MissingFeaturesWarning, match=r"^2 of 3 ids have no row in .*users\.csv") as record:
        x = design_matrix(t, id_map)
    assert record[0].filename == __file__  # stacklevel points at the caller
    assert x.toarray()[:2].sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design_matrix(t, IdMap(np.array([10, 30], dtype=np.int64)))  # nothing missing: silent


def test_row_of_finds_ids_outside_the_ratings(tmp_path):
    t = users_table(tmp_path)
    row = row_of(t, 99)
    assert row.shape == (1, 4) and row.format == "csr" and row.toarray().tolist() == [[0, 0, 0, 1]]
    assert row_of(t, "20").toarray().tolist() == [[0, 1, 0, 0]]
    assert row_of(t, 5) is None and row_of(t, "x") is None


def test_empty_table_aligns_to_zeros(tmp_path):
    t = from_columns([], {})
    x, missing = align(t, IdMap.identity(3))
    assert x.shape == (3, 0) and missing == 3 and row_of(t, 1) is None


# ---- MovieLens side files on tiny folders ------------------------------------------------------

U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|writer|T8H1N\n4|56|F|other|\n"
U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Café (1998)|||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
    "3|unknown|||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "4|Old (1931)|01-Jan-1931||http://x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


def folder(tmp_path, name: str, ratings: str, files: dict) -> Path:
    out = tmp_path / name
    out.mkdir()
    (out / ratings).write_text("1\t1\t5\t1\n")
    for file, text in files.items():
        (out / file).write_bytes(text.encode("latin-1"))
    return out


def test_ml100k_u_user(tmp_path, isolated):
    path = folder(tmp_path, "ml-100k", "u.data", {"u.user": U_USER})
    t = load_features("ml-100k", "user", path=path)
    assert t.ids.tolist() == [1, 2, 3, 4] and t.source == str(path / "u.user")
    assert list(dict.fromkeys(t.groups)) == ["age", "age_bucket", "gender", "occupation", "zip"]
    col = dense(t)
    ages = np.array([24, 53, 17, 56])
    np.testing.assert_allclose(col["age"], (ages - ages.mean()) / ages.std())
    assert col["age_bucket=18-24"] == [1, 0, 0, 0] and col["age_bucket=50-55"] == [0, 1, 0, 0]
    assert col["age_bucket=<18"] == [0, 0, 1, 0] and col["age_bucket=56+"] == [0, 0, 0, 1]
    assert col["zip=8"] == [1, 0, 0, 0] and col["zip=9"] == [0, 1, 0, 0] and col["zip=other"] == [0, 0, 1, 0]
    assert t.matrix.toarray()[3, [k for k, g in enumerate(t.groups) if g == "zip"]].sum() == 0  # no zip code
    assert col["occupation=other"] == [0, 1, 0, 1] and col["gender=F"] == [0, 1, 0, 1]


def test_ml100k_u_item_genres_and_year(tmp_path, isolated):
    genre = "".join(f"{g}|{k}\n" for k, g in enumerate(ml._ML100K_GENRES))
    path = folder(tmp_path, "ml-100k", "u.data", {"u.item": U_ITEM, "u.genre": genre})
    t = load_features("ml-100k", "item", path=path)
    assert list(dict.fromkeys(t.groups)) == ["year", "decade", "genre"]
    assert "genre=unknown" not in t.names
    col = dense(t)
    years = np.array([1995, 1998, 1931])  # the release date, else the title's year; item 3 has neither
    z = (years - years.mean()) / years.std()
    np.testing.assert_allclose(col["year"], [z[0], z[1], 0, z[2]])
    assert col["decade=1990s"] == [1, 1, 0, 0] and col["decade=1930s"] == [0, 0, 0, 1]
    assert col["genre=Comedy"] == pytest.approx([S3, 0, 0, 0]) and col["genre=Drama"] == [0, 1, 0, 0]
    genre_cols = [k for k, g in enumerate(t.groups) if g == "genre"]
    np.testing.assert_allclose(np.linalg.norm(t.matrix.toarray()[:, genre_cols], axis=1), [1, 1, 0, 1])


def test_ml100k_u_item_without_u_genre_uses_known_names(tmp_path, isolated):
    path = folder(tmp_path, "ml-100k", "u.data", {"u.item": U_ITEM})
    names = load_features("ml-100k", "item", path=path).names
    assert [n for n in names if n.startswith("genre=")] == [
        "genre=Action",
        "genre=Animation",
        "genre=Children's",
        "genre=Comedy",
        "genre=Drama",
    ]


def test_ml100k_bad_lines_name_file_and_line(tmp_path, isolated):
    path = folder(tmp_path, "ml-100k", "u.data", {"u.user": "1|24|M|x|1\n2|old|F|y|2\n", "u.item": "1|T|||u|0|2\n"})
    with pytest.raises(RatingsFileError, match=r"u\.user, line 2: age 'old' is not a number"):
        load_features("ml-100k", "user", path=path)
    with pytest.raises(RatingsFileError, match=r"u\.item, line 1: expected 24 fields separated by '\|', found 7"):
        load_features("ml-100k", "item", path=path)
    (path / "u.user").write_text("1|24|M|x|1\n1|25|F|y|2\n")
    with pytest.raises(RatingsFileError, match=r"u\.user, line 2: id 1 appears twice \(also on line 1\)"):
        load_features("ml-100k", "user", path=path)


def test_ml1m_users_and_movies_dat(tmp_path, isolated):
    users = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n"
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n"
    path = folder(tmp_path, "ml-1m", "ratings.dat", {"users.dat": users, "movies.dat": movies})
    u = load_features("ml-1m", "user", path=path)
    assert list(dict.fromkeys(u.groups)) == ["age_bucket", "gender", "occupation", "zip"]
    col = dense(u)
    assert col["age_bucket=<18"] == [1, 0, 0] and col["age_bucket=56+"] == [0, 1, 0]
    assert col["occupation=K-12 student"] == [1, 0, 0] and col["occupation=self-employed"] == [0, 1, 0]
    assert col["zip=5"] == [0, 0, 1]
    m = load_features("ml-1m", "item", path=path)
    assert m.names == ("year", "decade=1990s", "genre=Adventure", "genre=Animation", "genre=Children's", "genre=Comedy")
    assert dense(m)["year"] == [0, 0]  # one year for all: constant
    (path / "users.dat").write_text("1::F::1::10::48067\n2::M::30::16::70072\n")
    with pytest.raises(RatingsFileError, match=r"users\.dat, line 2: age code '30' is not one of 1, 18, 25"):
        load_features("ml-1m", "user", path=path)


def test_csv_datasets_movies_csv_and_no_user_attributes(tmp_path, isolated):
    path = folder(tmp_path, "ml-latest-small", "ratings.csv", {"movies.csv": MOVIES_CSV.replace("\u2013", "-")})
    t = load_features("ml-latest-small", "item", path=path)
    assert t.ids.tolist() == [1, 11, 140, 171011, 1800, 300]
    assert list(dict.fromkeys(t.groups)) == ["year", "decade", "genre"] and "genre=Comedy" in t.names
    for name in ("ml-latest-small", "ml-20m", "ml-10m"):
        with pytest.raises(ValueError, match=rf"{name} ships no user attributes \(only ml-100k, ml-1m do\)"):
            load_features(name, "user", path=path)
    with pytest.raises(ValueError, match=r"side must be 'user' or 'item'"):
        load_features("ml-100k", "users", path=path)


def test_missing_side_file_is_dataset_not_found(tmp_path, isolated):
    path = folder(tmp_path, "ml-100k", "u.data", {})
    with pytest.raises(ml.DatasetNotFoundError, match=r"u\.user not found"):
        load_features("ml-100k", "user", path=path)


# ---- the real MovieLens 100K (skipped without $PROBMF_DATA_DIR/ml-100k) ----------------------


def test_real_ml100k_side_files(ml100k_dir):
    missing = [f for f in ("u.user", "u.item", "u.data") if not (ml100k_dir / f).is_file()]
    if missing:
        pytest.skip(f"MovieLens 100K files {', '.join(missing)} not in {ml100k_dir}")
    users = load_features("ml-100k", "user", path=ml100k_dir, download=False)
    items = load_features("ml-100k", "item", path=ml100k_dir, download=False)
    assert users.matrix.shape[0] == 943 and items.matrix.shape[0] == 1682
    assert set(users.groups) == {"age", "age_bucket", "gender", "occupation", "zip"}
    assert set(items.groups) == {"year", "decade", "genre"}
    assert sum(g == "occupation" for g in users.groups) == 21 and sum(g == "genre" for g in items.groups) == 18
    # one-hot groups: exactly one 1 per user; the genre group has unit norm but for "unknown" movies
    x = users.matrix.toarray()
    for group in ("age_bucket", "gender", "occupation", "zip"):
        np.testing.assert_array_equal(x[:, [k for k, g in enumerate(users.groups) if g == group]].sum(1), 1)
    np.testing.assert_allclose([x[:, 0].mean(), x[:, 0].std()], [0, 1], atol=1e-12)
    genre = items.matrix.toarray()[:, [k for k, g in enumerate(items.groups) if g == "genre"]]
    norms = np.linalg.norm(genre, axis=1)
    assert np.allclose(norms[norms > 0], 1) and (norms == 0).sum() <= 2
    ratings = load_movielens("ml-100k", path=ml100k_dir, download=False)
    for table, id_map in ((users, ratings.user_ids), (items, ratings.item_ids)):
        x, missing = align(table, id_map)
        assert missing == 0 and x.shape == (len(id_map), len(table.names))
