"""Write ratings files (delimited text or Parquet), atomically: a failed write leaves any
existing file as it was."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from probmf.data.io.sniff import _PARQUET_SUFFIXES, _UNIT_SEP
from probmf.data.ratings import Ratings


def write_ratings(ratings: Ratings, path: str | os.PathLike[str], *, sep: str = ",", header: bool = True) -> None:
    """Write raw ids and ratings: Parquet for ``.parquet`` / ``.pq``, else delimited text.

    Columns ``userId, movieId, rating[, timestamp]``. The file is written under a temporary
    name in the same folder and renamed into place, so a failed write leaves any existing file
    untouched and never a partial one.

    Args:
      ratings: ratings whose ids are all known (no -1).
      path: destination file.
      sep: field separator for text (e.g. ",", "\\t", "::").
      header: write the column names as the first line (text only).
    """
    path = Path(os.fspath(path))
    df = ratings.to_dataframe()  # raises for unknown (-1) ids, whose raw ids are lost
    if path.suffix.lower() in _PARQUET_SUFFIXES:

        def write(f: BinaryIO) -> None:
            df.to_parquet(f, index=False)

    else:

        def write(f: BinaryIO) -> None:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            if len(sep) == 1:
                df.to_csv(text, sep=sep, header=header, index=False, lineterminator="\n")
            else:
                # pandas writes one-character separators only; swap in the real one per block.
                for start in range(0, max(len(df), 1), 1 << 20):
                    block = df.iloc[start : start + (1 << 20)].to_csv(
                        sep=_UNIT_SEP, header=header and start == 0, index=False, lineterminator="\n"
                    )
                    text.write(block.replace(_UNIT_SEP, sep))
            text.flush()
            text.detach()

    _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # "xb" creates a fresh file with the usual permissions (umask), unlike mkstemp's 0600.
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
