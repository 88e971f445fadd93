"""MovieLens ratings, official splits, titles and side information
(https://grouplens.org/datasets/movielens/).

A dataset folder ``<name>`` (the unzipped GroupLens archive) is looked for, in order, at:

1. the ``path`` argument;
2. ``$PROBMF_DATA_DIR/<name>``;
3. the cache, ``$XDG_CACHE_HOME/probmf/<name>`` (default ``~/.cache/probmf/<name>``);

and otherwise downloaded from ``https://files.grouplens.org/datasets/movielens/<name>.zip``
into the cache. A download is used only when its SHA-256 matches the pinned value below;
archives without a pinned value are never downloaded. Extraction refuses members that would
land outside the target folder and links (`probmf.data.archive`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import secrets
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from probmf.data.archive import UnsafeArchiveError, _safe_extract, sha256_file
from probmf.data.features import (
    FeatureTable,
    _decade,
    _encode,
    _id_array,
    _read_lines,
    _split_lines,
    _title_year,
    read_features,
)
from probmf.data.io import RatingsFileError, read_ratings
from probmf.data.io.sniff import _text_encoding
from probmf.data.ratings import Ratings
from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_preset

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "UnsafeArchiveError",
    "load_features",
    "load_movielens",
    "load_split",
    "load_split_or_synthetic",
    "load_titles",
]

URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
ENV_VAR = "PROBMF_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class _Spec:
    folder: str  # top folder inside the zip
    ratings: str
    sep: str
    header: bool
    scale: tuple[float, float]
    titles: str
    titles_encoding: str
    splits: tuple[str, ...] = ()
    split_files: tuple[str, str] = ("", "")  # train / test file name patterns
    users: str = ""  # the user attributes file; "" when the dataset ships none


_CSV_SCALE = (0.5, 5.0)


def _csv_spec(folder: str) -> _Spec:
    return _Spec(folder, "ratings.csv", ",", True, _CSV_SCALE, "movies.csv", "utf-8")


_SPECS = {
    "ml-100k": _Spec(
        "ml-100k",
        "u.data",
        "\t",
        False,
        (1.0, 5.0),
        "u.item",
        "latin-1",
        splits=("u1", "u2", "u3", "u4", "u5", "ua", "ub"),
        split_files=("{}.base", "{}.test"),
        users="u.user",
    ),
    "ml-1m": _Spec("ml-1m", "ratings.dat", "::", False, (1.0, 5.0), "movies.dat", "latin-1", users="users.dat"),
    # The 10M archive ships split_ratings.sh, which writes r1..r5 and ra/rb next to ratings.dat.
    "ml-10m": _Spec(
        "ml-10M100K",
        "ratings.dat",
        "::",
        False,
        (0.5, 5.0),
        "movies.dat",
        "utf-8",
        splits=("r1", "r2", "r3", "r4", "r5", "ra", "rb"),
        split_files=("{}.train", "{}.test"),
    ),
    "ml-20m": _csv_spec("ml-20m"),
    "ml-25m": _csv_spec("ml-25m"),
    "ml-32m": _csv_spec("ml-32m"),
    "ml-latest-small": _csv_spec("ml-latest-small"),
    "ml-latest": _csv_spec("ml-latest"),
}
DATASETS = tuple(_SPECS)

# SHA-256 of the GroupLens zips, as pinned in public code:
#   ml-100k, ml-1m, ml-20m, ml-25m, ml-latest-small: tensorflow/datasets,
#     tensorflow_datasets/url_checksums/movielens.txt;
#   ml-10m, ml-latest: ISG-Siegen/OmniRec, src/omnirec/data_loaders/movielens_small.py and
#     movielens_large.py, which pin the same values as above for the other five archives.
# GroupLens regenerates ml-latest from time to time; a newer release fails the check and has
# to be downloaded by hand. No public pin was found for ml-32m, so it is never downloaded.
_SHA256 = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-10m": "813c411ccb6122564edfe752e7f80c4dcc5aa25fa94c93622f6877a7ba252862",
    "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    "ml-latest": "66a9e518c747d76b241d9a859b001a2619d3ed1672ceef599eb50daf73a7b4a3",
}


class DatasetNotFoundError(FileNotFoundError):
    """A MovieLens dataset is neither on disk nor downloadable; the message says how to get it."""


# ---- public loaders ----------------------------------------------------------------------


def load_movielens(
    name: str, *, path: str | os.PathLike[str] | None = None, split: str | None = None, download: bool = True
) -> Ratings:
    """All ratings of MovieLens ``name``, or one file of an official split.

    Args:
      name: one of `DATASETS` ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
        "ml-latest-small", "ml-latest").
      path: the dataset folder (or a folder holding ``<name>/``); skips the search.
      split: None for the full ratings file, or one official split file such as "u1.base",
        "u1.test", "ua.base" (ml-100k) or "r1.train" (ml-10m).
      download: fetch the archive when it is not on disk.

    Returns:
      `Ratings` in the file's own id space (raw MovieLens ids), with timestamps.
    """
    spec = _spec(name)
    folder = _locate(name, path, download)
    file = spec.ratings if split is None else _split_file(name, spec, split)
    return _read(folder / file, spec, name)


def load_split(
    name: str, split: str, *, path: str | os.PathLike[str] | None = None, download: bool = True
) -> tuple[Ratings, Ratings]:
    """An official train / test split: ml-100k "u1".."u5", "ua", "ub"; ml-10m "r1".."r5", "ra", "rb".

    The test set is expressed in the training set's id space, so its users and items that
    never occur in training get the index -1 (cold).

    Returns:
      (train, test) `Ratings`.
    """
    spec = _spec(name)
    if split not in spec.splits:
        have = ", ".join(spec.splits) if spec.splits else "none"
        raise ValueError(f"{name} has no official split {split!r}; its splits: {have}")
    folder = _locate(name, path, download)
    train_file, test_file = (pattern.format(split) for pattern in spec.split_files)
    train = _read(folder / train_file, spec, name)
    test = _read(folder / test_file, spec, name)
    return train, test.reindex(train.user_ids, train.item_ids)


def load_split_or_synthetic(
    name: str, split: str, *, path: str | os.PathLike[str] | None = None, download: bool = True, seed: int = 0
) -> tuple[Ratings, Ratings, bool]:
    """`load_split`, or, when the dataset is absent (and not downloaded), the "ml100k"
    synthetic preset split 80/20 at random with ``seed``. Returns (train, test, whether
    this is MovieLens)."""
    try:
        return (*load_split(name, split, path=path, download=download), True)
    except DatasetNotFoundError:
        ratings, _ = synthetic_preset("ml100k", seed=seed)
        return (*random_split(ratings, 0.2, seed=seed), False)


def load_titles(
    name: str, *, path: str | os.PathLike[str] | None = None, download: bool = True, encoding: str | None = None
) -> dict:
    """Movie titles by raw item id (int), from ``u.item``, ``movies.dat`` or ``movies.csv``.

    Args:
      encoding: the titles file's text encoding; None uses the dataset's own (latin-1 for
        ml-100k and ml-1m, UTF-8 for the others; a UTF-8 byte-order mark is skipped).

    Raises:
      RatingsFileError: a line that is not valid text in that encoding, or whose movie id is
        not an integer (naming the file, the line and the value), or a ``movies.csv`` header
        without ``movieId`` and ``title``.
    """
    spec = _spec(name)
    file = _locate(name, path, download) / spec.titles
    encoding = encoding or spec.titles_encoding
    raw = file.read_bytes()
    try:
        text = raw.decode(_text_encoding(encoding))
    except UnicodeDecodeError as err:
        bad_line = raw.count(b"\n", 0, err.start) + 1
        value = raw.splitlines()[bad_line - 1]
        raise RatingsFileError(
            f"{file}, line {bad_line}: not valid {encoding} text: {value!r}; pass encoding= the file's encoding "
            f"(e.g. 'latin-1')",
            path=file,
            line=bad_line,
            value=value,
        ) from None

    def movie_id(value: str, line: int) -> int:
        try:
            return int(value)
        except ValueError:
            raise RatingsFileError(
                f"{file}, line {line}: movie id {value!r} is not an integer", path=file, line=line, value=value
            ) from None

    titles: dict = {}
    if spec.titles.endswith(".csv"):
        reader = csv.reader(io.StringIO(text, newline=""))
        head = next(reader, [])
        if "movieId" not in head or "title" not in head:
            raise RatingsFileError(
                f"{file}, line 1: header {head} has no movieId or title column", path=file, line=1, value=head
            )
        item_col, title_col = head.index("movieId"), head.index("title")
        for row in reader:
            if row:
                titles[movie_id(row[item_col], reader.line_num)] = row[title_col]
        return titles
    sep = "|" if spec.titles == "u.item" else "::"
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split(sep)
        if len(fields) >= 2 and fields[0].strip():
            titles[movie_id(fields[0], number)] = fields[1]
    return titles


def load_features(
    name: str, side: str, *, path: str | os.PathLike[str] | None = None, download: bool = True
) -> FeatureTable:
    """The user or item attributes MovieLens ``name`` ships, as a `FeatureTable` by raw id.

    Groups of columns (`probmf.data.features` describes the encodings):

    - ml-100k users (``u.user``): ``age`` (standardised), ``age_bucket`` (ML-1M's ranges <18,
      18-24, 25-34, 35-44, 45-49, 50-55, 56+), ``gender``, ``occupation``, ``zip`` (the first
      digit of the zip code; "other" for a code not starting with a digit);
    - ml-1m users (``users.dat``): ``age_bucket`` (the file's age code), ``gender``,
      ``occupation`` (the code's name, e.g. "writer"), ``zip``;
    - items: ``year`` (standardised release year: ml-100k's release date, else the title's
      trailing "(1995)"), ``decade`` ("1990s") and ``genre`` (multi-hot scaled by
      1/sqrt(#genres); ml-100k's "unknown" and "(no genres listed)" are no genre).

    Args:
      name: one of `DATASETS`; user attributes exist for ml-100k and ml-1m only.
      side: "user" or "item".
      path: as for `load_movielens`.
      download: as for `load_movielens`.

    Raises:
      ValueError: ``side="user"`` for a dataset without user attributes.
      RatingsFileError: a malformed line, naming the file and the line.
    """
    spec = _spec(name)
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    if side == "user" and not spec.users:
        have = ", ".join(n for n, s in _SPECS.items() if s.users)
        raise ValueError(f"{name} ships no user attributes (only {have} do); use side='item' for its movies")
    file = _locate(name, path, download) / (spec.users if side == "user" else spec.titles)
    if not file.is_file():
        raise DatasetNotFoundError(f"{name}: {file} not found")
    if file.suffix == ".csv":
        return _movies_csv(file, spec.titles_encoding)
    return _SIDE_READERS[file.name](file, spec.titles_encoding)


# ---- side files --------------------------------------------------------------------------

# ML-1M's age codes and the ranges they stand for; ML-100K's ages are bucketed the same way.
_AGE_BUCKETS = {1: "<18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
# ML-1M's occupation codes 0..20 (its README); 0 is "other" or not specified.
_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
# u.item's 19 genre flags, in order, when the folder lacks u.genre.
_ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_USER_KINDS = {name: "categorical" for name in ("age_bucket", "gender", "occupation", "zip")} | {"age": "numeric"}
_ITEM_KINDS = {"year": "numeric", "decade": "categorical", "genre": "multilabel"}


def _age_bucket(age: float) -> str:
    """The ML-1M range of an age in years ("" when missing)."""
    if np.isnan(age):
        return ""
    return _AGE_BUCKETS[max((low for low in _AGE_BUCKETS if low <= age), default=1)]


def _zip_prefix(zip_code: str) -> str:
    """The first digit (a US region); Canadian and other non-digit codes are "other"."""
    return "" if not zip_code else zip_code[0] if zip_code[0].isdigit() else "other"


def _u_user(file: Path, encoding: str) -> FeatureTable:
    """ml-100k ``u.user``: user id|age|gender|occupation|zip code."""
    table, rows = _split_lines(file, _read_lines(file, encoding), "|", 5)
    ages = np.full(len(table), np.nan)
    for k, fields in enumerate(table):
        if fields[1]:
            try:
                ages[k] = float(fields[1])
            except ValueError:
                raise rows.error(k, f"age {fields[1]!r} is not a number", fields[1]) from None
    columns = {
        "age": list(ages),
        "age_bucket": [_age_bucket(a) for a in ages],
        "gender": [f[2] for f in table],
        "occupation": [f[3] for f in table],
        "zip": [_zip_prefix(f[4]) for f in table],
    }
    return _encode(_id_array([f[0] for f in table], rows), columns, _USER_KINDS, rows)


def _users_dat(file: Path, encoding: str) -> FeatureTable:
    """ml-1m ``users.dat``: UserID::Gender::Age::Occupation::Zip-code (age and occupation are codes)."""
    table, rows = _split_lines(file, _read_lines(file, encoding), "::", 5)

    def decode(k: int, what: str, code: str, names: dict) -> str:
        if not code:
            return ""
        try:
            return names[int(code)]
        except (ValueError, KeyError):
            raise rows.error(k, f"{what} code {code!r} is not one of {', '.join(map(str, names))}", code) from None

    occupations = dict(enumerate(_OCCUPATIONS))
    columns = {
        "age_bucket": [decode(k, "age", f[2], _AGE_BUCKETS) for k, f in enumerate(table)],
        "gender": [f[1] for f in table],
        "occupation": [decode(k, "occupation", f[3], occupations) for k, f in enumerate(table)],
        "zip": [_zip_prefix(f[4]) for f in table],
    }
    kinds = {name: _USER_KINDS[name] for name in columns}
    return _encode(_id_array([f[0] for f in table], rows), columns, kinds, rows)


def _u_item(file: Path, encoding: str) -> FeatureTable:
    """ml-100k ``u.item``: movie id|title|release date|video release date|URL|19 genre flags
    (the genre names from ``u.genre`` beside it when present)."""
    genres: tuple[str, ...] = _ML100K_GENRES
    if (file.parent / "u.genre").is_file():
        # "name|index" lines; the index is the flag's position.
        pairs = _split_lines(file.parent / "u.genre", _read_lines(file.parent / "u.genre", encoding), "|", 2)[0]
        genres = tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
    table, rows = _split_lines(file, _read_lines(file, encoding), "|", 5 + len(genres))
    labels = []
    for k, fields in enumerate(table):
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise rows.error(k, f"genre flags {'|'.join(flags)!r} are not all 0 or 1", "|".join(flags))
        # "unknown" says the genre is not known: no genre, as "(no genres listed)" in movies.csv.
        labels.append(tuple(g for g, flag in zip(genres, flags, strict=True) if flag == "1" and g != "unknown"))
    years = np.array([_release_year(f[2], f[1]) for f in table])
    columns = {"year": list(years), "decade": [_decade(y) for y in years], "genre": labels}
    return _encode(_id_array([f[0] for f in table], rows), columns, _ITEM_KINDS, rows)


def _release_year(date: str, title: str) -> float:
    """The year of a release date such as "01-Jan-1995", else of the title's "(1995)"."""
    match = re.search(r"(\d{4})\s*$", date)
    return float(match.group(1)) if match else _title_year(title)


def _movies_dat(file: Path, encoding: str) -> FeatureTable:
    """ml-1m / ml-10m ``movies.dat``: MovieID::Title::Genres (``|``-separated)."""
    table, rows = _split_lines(file, _read_lines(file, encoding), "::", 3)
    columns = {"title": [f[1] for f in table], "genre": [f[2] for f in table]}
    kinds = {"title": "title", "genre": "multilabel"}
    return _encode(_id_array([f[0] for f in table], rows), columns, kinds, rows)


def _movies_csv(file: Path, encoding: str) -> FeatureTable:
    """``movies.csv``: movieId,title,genres; the genres group is named "genre" as elsewhere."""
    table = read_features(
        file, id_column="movieId", columns=("title", "genres"), kinds={"title": "title"}, encoding=encoding
    )
    names = tuple(n.replace("genres=", "genre=", 1) if n.startswith("genres=") else n for n in table.names)
    groups = tuple("genre" if g == "genres" else g for g in table.groups)
    return table._replace(names=names, groups=groups)


_SIDE_READERS = {"u.user": _u_user, "users.dat": _users_dat, "u.item": _u_item, "movies.dat": _movies_dat}


# ---- reading -----------------------------------------------------------------------------


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(DATASETS)}") from None


def _split_file(name: str, spec: _Spec, split: str) -> str:
    files = [pattern.format(s) for s in spec.splits for pattern in spec.split_files]
    if split not in files:
        have = ", ".join(files) if files else "none"
        raise ValueError(f"{name} has no split file {split!r}; its split files: {have}")
    return split


def _read(file: Path, spec: _Spec, name: str) -> Ratings:
    if not file.is_file():
        hint = ""
        if name == "ml-10m" and file.name != spec.ratings:
            hint = " (run split_ratings.sh from the archive in that folder to create the splits)"
        raise DatasetNotFoundError(f"{name}: {file} not found{hint}")
    return read_ratings(file, sep=spec.sep, header=spec.header, rating_scale=spec.scale)


# ---- locating and downloading ------------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "probmf"


def _candidates(root: Path, name: str, spec: _Spec) -> list[Path]:
    """``root/<name>``, then ``root/<folder in the zip>`` when that differs (ml-10M100K)."""
    out = [root / name]
    if spec.folder != name:
        out.append(root / spec.folder)
    return out


def _locate(name: str, path: str | os.PathLike[str] | None, download: bool) -> Path:
    spec = _spec(name)
    if path is not None:
        path = Path(os.fspath(path)).expanduser()
        for folder in [path, *_candidates(path, name, spec)]:
            if (folder / spec.ratings).is_file():
                return folder
        raise DatasetNotFoundError(
            f"MovieLens {name}: no {spec.ratings} in {path} (nor in {path / name}/); pass path= the "
            f"folder unzipped from {URL.format(name=name)}"
        )
    looked = []
    env = os.environ.get(ENV_VAR, "")
    if env:
        for folder in _candidates(Path(env).expanduser(), name, spec):
            looked.append(f"{folder}  (${ENV_VAR})")
            if (folder / spec.ratings).is_file():
                return folder
    else:
        looked.append(f"${ENV_VAR}/{name}  (${ENV_VAR} is not set)")
    cache = _cache_root()
    for folder in _candidates(cache, name, spec):
        looked.append(f"{folder}  (cache)")
        if (folder / spec.ratings).is_file():
            return folder
    if not download:
        reason = "downloading is turned off (download=False)"
    else:
        try:
            return _download(name, spec, cache)
        except _DownloadFailed as err:
            reason = str(err)
    url = URL.format(name=name)
    raise DatasetNotFoundError(
        f"MovieLens {name} not found. Looked for {spec.ratings} in:\n"
        + "".join(f"  {place}\n" for place in looked)
        + f"and could not download it: {reason}.\n"
        f"To get it: download {url}, unzip it, and either move its {spec.folder}/ folder to "
        f"{cache / name}, or set {ENV_VAR} to the folder that holds {name}/, or pass "
        f"path= the folder that holds {spec.ratings}."
    )


class _DownloadFailed(Exception):
    pass


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to the new file ``dest`` (replaced in tests: no network there)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "xb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _download(name: str, spec: _Spec, cache: Path) -> Path:
    """Fetch and verify ``<name>.zip`` into ``cache`` and unpack it as ``cache/<name>``."""
    url = URL.format(name=name)
    expected = _SHA256.get(name)
    if expected is None:
        raise _DownloadFailed(f"no known SHA-256 for {url}, so it is not downloaded automatically")
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{name}.zip"
    if archive.is_file() and sha256_file(archive) != expected:
        archive.unlink()  # a corrupt or truncated earlier download is never trusted
    if not archive.is_file():
        part = cache / f".{name}.zip.{secrets.token_hex(6)}.part"
        try:
            try:
                _fetch(url, part)
            except Exception as err:  # URLError, timeouts, HTTP errors: all mean "not downloaded"
                raise _DownloadFailed(f"{url}: {err}") from err
            got = sha256_file(part)
            if got != expected:
                raise _DownloadFailed(f"{url} has SHA-256 {got}, expected {expected}; the file was discarded")
            os.replace(part, archive)
        finally:
            part.unlink(missing_ok=True)
    target = cache / name
    _extract(archive, spec, target)
    return target


def _extract(archive: Path, spec: _Spec, target: Path) -> None:
    """Unzip into a temporary folder next to ``target``, then rename its top folder into place."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".unzip", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            _safe_extract(zf, work)
        unpacked = work / spec.folder
        if not (unpacked / spec.ratings).is_file():
            raise _DownloadFailed(f"{archive} has no {spec.folder}/{spec.ratings}")
        if (target / spec.ratings).is_file():
            return  # a concurrent download finished first
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)  # an incomplete earlier extraction (it lacked the ratings file)
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
