"""Read and write ratings files: delimited text (CSV, tab, ``::``, ...) and Parquet.

`read_ratings` turns one rating per line (``user item rating [timestamp]``) into a `Ratings`.
It reads with the pandas C parser and checks every value vectorised, so a 20M-line file loads
in seconds; only when a check fails does it go back to the file to quote the offending line.
Every problem is a `RatingsFileError` naming the file, the 1-based line (the row, for Parquet)
and the offending value.

One idea a module:

- `errors`: `RatingsFileError`.
- `sniff`: the file's format: Parquet or text, encoding, separator, header, which field is which.
- `parse`: lines into a table whose rows know their file line; a line the parser refuses is quoted.
- `checks`: the table's values checked vectorised into `Ratings`; a DataFrame checked the same way.
- `read`: `read_ratings` (parse, then check), and the command line's small CSVs.
- `write`: `write_ratings`, atomically.
"""

from probmf.data.io.checks import dataframe_columns, read_dataframe, to_ratings
from probmf.data.io.errors import RatingsFileError
from probmf.data.io.read import read_new_user, read_pairs, read_ratings
from probmf.data.io.write import write_ratings

__all__ = [
    "RatingsFileError",
    "dataframe_columns",
    "read_dataframe",
    "read_new_user",
    "read_pairs",
    "read_ratings",
    "to_ratings",
    "write_ratings",
]
