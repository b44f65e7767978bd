"""Reading tables with errors that name the file and the line (shared by every loader)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, StorageError

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
    except OSError as e:
        raise StorageError(f"{p}: cannot read: {e}") from None
    except ValueError as e:
        raise DataError(f"{p}: cannot parse: {e}") from None
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


_EXACT = 2**53  # float64 holds every integer of smaller magnitude exactly, and no wider range
_INT64_MAX = np.iinfo(np.int64).max
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fail(path: PathLike, bad: np.ndarray, line0: int, message: str, s: pd.Series) -> None:
    """Raise a DataError for the first True of ``bad``: ``message`` formatted with the value."""
    i = int(np.argmax(bad))
    raise DataError(f"{path}, line {i + line0}: " + message.format(value=show(s.iloc[i])))


def numeric(
    df: pd.DataFrame, col: str, path: PathLike, *, line0: int, integer: bool = False
) -> np.ndarray:
    """Column ``col`` as numbers; the first missing, non-numeric or out-of-range value is a
    DataError naming the file, line and value.

    This is the one place where every loader turns a text column into numbers, so the range checks
    live here: with ``integer=True`` (ids, times) the result is int64 and a value that int64 cannot
    hold exactly (``1e30``, ``99999999999999999999``, ``inf``, or a fraction) is an error, never
    wrapped to INT64_MIN or merged with a neighbour. A column that pandas read as decimal numbers
    (because some value has an exponent or a point) is exact only below 2**53 in magnitude, so a
    larger value there is an error too. Otherwise the result is float64 and must be finite and
    within float32's range (ratings are stored as float32)."""
    s = df[col]
    values = pd.to_numeric(s, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = s.iloc[i]
        what = "is missing" if pd.isna(raw) else f"has non-numeric value {show(raw)}"
        raise DataError(f"{path}, line {i + line0}: column {col!r} {what}")
    arr = values.to_numpy()
    if arr.dtype.kind not in "iuf":
        _fail(path, np.ones(len(arr), bool), line0, f"column {col!r} has non-numeric value {{value}}", s)
    if integer:
        return _exact_int64(arr, s, col, path, line0=line0)
    arr = arr.astype(np.float64)
    out = ~(np.abs(arr) <= _FLOAT32_MAX)
    if out.any():
        _fail(path, out, line0, f"column {col!r} has value {{value}}, beyond the float32 range", s)
    return arr


def _exact_int64(arr: np.ndarray, s: pd.Series, col: str, path: PathLike, *, line0: int) -> np.ndarray:
    if arr.dtype.kind == "u":
        big = arr > np.uint64(_INT64_MAX)
        if big.any():
            _fail(path, big, line0, f"column {col!r} has value {{value}}, too large for int64", s)
    elif arr.dtype.kind == "f":
        huge = ~(np.abs(arr) < 2.0**63)
        if huge.any():
            _fail(path, huge, line0, f"column {col!r} has value {{value}}, outside the int64 range", s)
        inexact = ~(np.abs(arr) < _EXACT)
        if inexact.any():
            _fail(
                path, inexact, line0,
                f"column {col!r} has value {{value}}, which cannot be read exactly: the column "
                "holds decimal numbers, exact only below 2**53",
                s,
            )  # fmt: skip
        frac = arr != np.floor(arr)
        if frac.any():
            _fail(path, frac, line0, f"column {col!r} has non-integer value {{value}}", s)
    return arr.astype(np.int64)


def optional_int(df: pd.DataFrame, col: str, path: PathLike, *, line0: int) -> pd.Series:
    """Column ``col`` as nullable integers (``Int64``): blanks stay missing, and every value given
    must be an integer that int64 holds exactly (the checks of :func:`numeric`)."""
    s = df[col]
    values = pd.to_numeric(s, errors="coerce")
    present = s.notna().to_numpy()
    bad = present & values.isna().to_numpy()
    if bad.any():
        _fail(path, bad, line0, f"column {col!r} has non-numeric value {{value}}", s)
    arr = values.to_numpy()
    if arr.dtype.kind not in "iuf":
        _fail(path, present, line0, f"column {col!r} has non-numeric value {{value}}", s)
    filled = np.where(present, arr, 0).astype(arr.dtype)
    exact = _exact_int64(filled, s, col, path, line0=line0)
    return pd.Series(pd.arrays.IntegerArray(exact, ~present), index=s.index)


def not_blank(df: pd.DataFrame, col: str, path: PathLike, *, line0: int) -> pd.Series:
    """Column ``col`` as strings; a missing value is a DataError naming the line."""
    s = df[col]
    bad = s.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}, line {i + line0}: column {col!r} is missing")
    return s.astype(str)
