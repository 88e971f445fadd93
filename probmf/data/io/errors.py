"""The error every unreadable ratings input raises: `RatingsFileError` names the file, the
1-based line (the row, for Parquet and DataFrames) and the offending value."""

from __future__ import annotations

import os
from typing import Any


class RatingsFileError(ValueError):
    """A ratings file that cannot be read as ratings.

    Attributes:
      path: the file, as a string.
      line: 1-based line number (row number for Parquet), or None for a whole-file problem.
      value: the offending value (a string as it appears in the file), or None.
    """

    def __init__(
        self, message: str, *, path: str | os.PathLike[str], line: int | None = None, value: Any = None
    ) -> None:
        super().__init__(message)
        self.path = str(path)
        self.line = line
        self.value = value
