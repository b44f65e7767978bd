"""Reading tables with errors that name the file and the line (shared by every loader)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError

PathLike = str | os.PathLike[str]


def existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} not found")
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    return p


def find_file(directory: Path, names: Sequence[str], what: str) -> Path:
    for n in names:
        if (directory / n).is_file():
            return directory / n
    raise DataError(f"{directory}: no {what} file (looked for {', '.join(names)})")


def read_csv(
    path: PathLike,
    *,
    sep: str = ",",
    header: int | None = 0,
    names: Sequence[str] | None = None,
    required: Iterable[str] = (),
    encoding: str = "utf-8",
    dtype: dict[str, object] | type | None = None,
    source: bytes | None = None,
) -> pd.DataFrame:
    """Read a delimited file; raise DataError for a missing/empty file or missing columns.

    ``source`` lets a caller pass already pre-processed bytes (e.g. ``::`` replaced by tabs) while
    errors still name ``path``. Row ``i`` of the result is line ``i + 1 + (header is not None)``.
    """
    p = Path(path)
    if source is None:
        existing(p, "file")
    try:
        df = pd.read_csv(
            io.BytesIO(source) if source is not None else p,
            sep=sep,
            header=header,
            names=list(names) if names is not None else None,
            encoding=encoding,
            dtype=dtype,  # type: ignore[arg-type]
            skip_blank_lines=False,
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{p}: cannot parse: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid {encoding} text: {e}") from None
    if len(df) == 0:
        raise DataError(f"{p}: file has a header but no rows")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {missing} (found {list(df.columns)})")
    return df


def first_line(header: int | None) -> int:
    """The file line number of row 0."""
    return 1 if header is None else header + 2


def show(value: object) -> str:
    """A value as it should appear in an error message (NumPy scalars as plain Python values)."""
    item = getattr(value, "item", None)
    return repr(item() if callable(item) else value)


def numeric(
    df: pd.DataFrame, col: str, path: PathLike, *, line0: int, integer: bool = False
) -> np.ndarray:
    """Column ``col`` as numbers; the first missing or non-numeric value is a DataError naming the
    file, line and value."""
    s = df[col]
    values = pd.to_numeric(s, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = s.iloc[i]
        what = "is missing" if pd.isna(raw) else f"has non-numeric value {show(raw)}"
        raise DataError(f"{path}, line {i + line0}: column {col!r} {what}")
    arr = values.to_numpy()
    if integer:
        if arr.dtype.kind == "f":
            frac = arr != np.floor(arr)
            if frac.any():
                i = int(np.argmax(frac))
                raise DataError(
                    f"{path}, line {i + line0}: column {col!r} has non-integer value {show(s.iloc[i])}"
                )
        return arr.astype(np.int64)
    return arr.astype(np.float64)


def not_blank(df: pd.DataFrame, col: str, path: PathLike, *, line0: int) -> pd.Series:
    """Column ``col`` as strings; a missing value is a DataError naming the line."""
    s = df[col]
    bad = s.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}, line {i + line0}: column {col!r} is missing")
    return s.astype(str)
