"""Hostile input for the data layer and evaluation: every loader on truncated, empty, wrongly
encoded and wrongly delimited copies of the real files, out-of-range ids and times, and every array
entry point (Interactions.from_arrays, metrics, splits, sampling, statistics) on wrong dtypes,
shapes, NaN/inf and out-of-range values. Each case must raise the typed error of
``recforge.errors`` that the README promises, never a bare ValueError/OverflowError/... and never a
silently wrong result (issue #13, defects 6, 7, 10 and 11)."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch

from recforge import Interactions, datasets, metrics, sampling, split, stats
from recforge.errors import ConfigError, DataError, RecforgeError, SplitError, StorageError

N_ROWS = 2_000  # rows of the real ratings file kept in each copy (keeps every case cheap)
ML100K_GENRES = datasets.movielens.ML100K_GENRES


# --- copies of the real files -------------------------------------------------------------------


def _ml_csv(shared: Path, tmp: Path) -> Path:
    """ml-latest-small with its first N_ROWS ratings: ratings.csv, movies.csv, links.csv."""
    src, d = shared / "ml-latest-small", tmp / "ml"
    d.mkdir()
    for name in ("movies.csv", "links.csv"):
        shutil.copy(src / name, d / name)
    lines = (src / "ratings.csv").read_text().splitlines(keepends=True)[: N_ROWS + 1]
    (d / "ratings.csv").write_text("".join(lines))
    return d


def _ratings(shared: Path) -> pd.DataFrame:
    return pd.read_csv(shared / "ml-latest-small" / "ratings.csv", nrows=N_ROWS)


def _ml_1m(shared: Path, tmp: Path) -> Path:
    """The same ratings in the 1M format (``::``-separated, latin-1)."""
    d = tmp / "ml-1m"
    d.mkdir()
    r = _ratings(shared)
    m = pd.read_csv(shared / "ml-latest-small" / "movies.csv")
    with open(d / "ratings.dat", "w", encoding="latin-1") as f:
        for row in r.itertuples(index=False):
            f.write(f"{row.userId}::{row.movieId}::{row.rating:g}::{row.timestamp}\n")
    with open(d / "movies.dat", "w", encoding="latin-1", errors="replace") as f:
        for row in m.itertuples(index=False):
            f.write(f"{row.movieId}::{row.title}::{row.genres}\n")
    return d


def _ml_100k(shared: Path, tmp: Path) -> Path:
    """The same ratings in the 100k format: ``u.data`` (tabs) and ``u.item`` (``|``, 19 flags)."""
    d = tmp / "ml-100k"
    d.mkdir()
    r = _ratings(shared)
    m = pd.read_csv(shared / "ml-latest-small" / "movies.csv")
    r.to_csv(d / "u.data", sep="\t", header=False, index=False)
    with open(d / "u.item", "w", encoding="latin-1", errors="replace") as f:
        for row in m.itertuples(index=False):
            g = set(str(row.genres).replace("Children", "Children's").split("|"))
            flags = "|".join("1" if name in g else "0" for name in ML100K_GENRES)
            title = str(row.title).replace("|", "/")
            f.write(f"{row.movieId}|{title}|01-Jan-1995||http://x|{flags}\n")
    return d


def _tmdb_csv(shared: Path, tmp: Path) -> Path:
    with zipfile.ZipFile(shared / "tmdb-5000" / "tmdb_5000_movies.csv.zip") as z:
        z.extract("tmdb_5000_movies.csv", tmp)
    return tmp / "tmdb_5000_movies.csv"


def _titles(shared: Path, tmp: Path) -> Path:
    p = tmp / "MicroLens-100k_title_en.csv"
    shutil.copy(shared / "microlens-100k" / "MicroLens-100k_title_en.csv", p)
    return p


def _pairs(shared: Path, tmp: Path) -> Path:
    """Interactions over the real MicroLens titles (ids 1..19738), with a header."""
    rng = np.random.default_rng(0)
    n = 300
    p = tmp / "MicroLens-100k_pairs.csv"
    pd.DataFrame(
        {
            "user": rng.integers(1, 40, n),
            "item": rng.integers(1, 19_739, n),
            "timestamp": rng.integers(1_600_000_000_000, 1_700_000_000_000, n),
        }
    ).to_csv(p, index=False)
    return p


def _kindle(shared: Path, tmp: Path) -> Path:
    p = tmp / "kindle_reviews.csv"
    shutil.copy(shared / "kindle-sample" / "kindle_reviews.csv", p)
    return p


def _kindle_records(shared: Path) -> list[dict[str, Any]]:
    ref = pd.read_csv(shared / "kindle-sample" / "kindle_reviews.csv", nrows=300)
    return ref[["reviewerID", "asin", "overall", "unixReviewTime"]].to_dict("records")


def _kindle_json(shared: Path, tmp: Path, gz: bool = False) -> Path:
    p = tmp / ("Kindle_Store_5.json.gz" if gz else "Kindle_Store_5.json")
    text = "".join(json.dumps(r) + "\n" for r in _kindle_records(shared))
    if gz:
        with gzip.open(p, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


# --- corruptions ---------------------------------------------------------------------------------


def _set_line(p: Path, line: int, text: str, encoding: str = "utf-8") -> None:
    """Replace file line ``line`` (1-based) of ``p``."""
    lines = p.read_text(encoding=encoding).splitlines()
    lines[line - 1] = text
    p.write_text("\n".join(lines) + "\n", encoding=encoding)


def _truncate_after_field(p: Path, line: int, n_fields: int, sep: str) -> None:
    """Cut the file inside line ``line``, keeping only its first ``n_fields`` fields (a write that
    stopped early)."""
    lines = p.read_bytes().split(b"\n")
    kept = sep.encode().join(lines[line - 1].split(sep.encode())[:n_fields])
    p.write_bytes(b"\n".join(lines[: line - 1] + [kept]))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _utf16(p: Path) -> None:
    p.write_bytes(p.read_text(encoding="latin-1").encode("utf-16"))


def _bad_byte(p: Path, line: int) -> None:
    """An invalid UTF-8 byte (a lone 0xff) inside line ``line``."""
    lines = p.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:3] + b"\xff\xfe" + lines[line - 1][3:]
    p.write_bytes(b"\n".join(lines))


def _resep(p: Path, old: str, new: str) -> None:
    p.write_bytes(p.read_bytes().replace(old.encode(), new.encode()))


Case = tuple[str, Callable[[Path, Path], Callable[[], object]], type[Exception], str]


def _ml(corrupt: Callable[[Path], object]) -> Callable[[Path, Path], Callable[[], object]]:
    def make(shared: Path, tmp: Path) -> Callable[[], object]:
        d = _ml_csv(shared, tmp)
        corrupt(d)
        return lambda: datasets.load_movielens(d)

    return make


def _fmt(
    build: Callable[[Path, Path], Path], file: str, corrupt: Callable[[Path], object]
) -> Callable[[Path, Path], Callable[[], object]]:
    def make(shared: Path, tmp: Path) -> Callable[[], object]:
        d = build(shared, tmp)
        corrupt(d / file)
        return lambda: datasets.load_movielens(d)

    return make


def _file(
    build: Callable[[Path, Path], Path],
    corrupt: Callable[[Path], object],
    load: Callable[[Path], object],
) -> Callable[[Path, Path], Callable[[], object]]:
    def make(shared: Path, tmp: Path) -> Callable[[], object]:
        p = build(shared, tmp)
        corrupt(p)
        return lambda: load(p)

    return make


def _with_titles(shared: Path, tmp: Path) -> Callable[[Path], object]:
    titles = _titles(shared, tmp)
    return lambda p: datasets.load_microlens(p, titles)


def _pairs_case(corrupt: Callable[[Path], object]) -> Callable[[Path, Path], Callable[[], object]]:
    def make(shared: Path, tmp: Path) -> Callable[[], object]:
        p = _pairs(shared, tmp)
        corrupt(p)
        load = _with_titles(shared, tmp)
        return lambda: load(p)

    return make


def _json_gz(corrupt: Callable[[Path], object]) -> Callable[[Path, Path], Callable[[], object]]:
    return _file(lambda s, t: _kindle_json(s, t, gz=True), corrupt, datasets.load_amazon_reviews)


def _json(corrupt: Callable[[Path], object]) -> Callable[[Path, Path], Callable[[], object]]:
    return _file(_kindle_json, corrupt, datasets.load_amazon_reviews)


def _tmdb(corrupt: Callable[[Path], object]) -> Callable[[Path, Path], Callable[[], object]]:
    return _file(_tmdb_csv, corrupt, datasets.load_tmdb)


def _tmdb_zip(shared: Path, tmp: Path, data: bytes) -> Callable[[], object]:
    p = tmp / "tmdb_5000_movies.csv.zip"
    p.write_bytes(data)
    return lambda: datasets.load_tmdb(p)


def _zip_bytes(shared: Path) -> bytes:
    return (shared / "tmdb-5000" / "tmdb_5000_movies.csv.zip").read_bytes()


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes(x ^ 0xFF for x in b[mid : mid + 64]) + b[mid + 64 :]


def _tmdb_cell(p: Path, col: str, value: str) -> None:
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    df.loc[0, col] = value
    df.to_csv(p, index=False)


def _genres_cell(p: Path, value: str) -> None:
    _tmdb_cell(p, "genres", value)


R = "ratings.csv"
LOADER_CASES: list[Case] = [
    # MovieLens latest (csv): truncated, empty, encoding, delimiter, out-of-range values.
    ("ml truncated row", _ml(lambda d: _truncate_after_field(d / R, 501, 2, ",")), DataError,
     r"ratings.csv, line 501: column 'rating' is missing"),
    ("ml empty ratings", _ml(lambda d: _empty(d / R)), DataError, "file is empty"),
    ("ml header only", _ml(lambda d: (d / R).write_text("userId,movieId,rating,timestamp\n")),
     DataError, "no rows"),
    ("ml empty movies", _ml(lambda d: _empty(d / "movies.csv")), DataError, "movies.csv: file is empty"),
    ("ml utf-16", _ml(lambda d: _utf16(d / R)), DataError, "ratings.csv: not valid utf-8"),
    ("ml bad byte", _ml(lambda d: _bad_byte(d / "movies.csv", 10)), DataError, "movies.csv: not valid utf-8"),
    ("ml semicolons", _ml(lambda d: _resep(d / R, ",", ";")), DataError, r"missing column\(s\)"),
    ("ml tabs in movies", _ml(lambda d: _resep(d / "movies.csv", ",", "\t")), DataError,
     r"movies.csv: missing column\(s\)"),
    ("ml movies is a folder", _ml(lambda d: ((d / "movies.csv").unlink(), (d / "movies.csv").mkdir())),
     StorageError, "movies.csv: cannot read"),
    ("ml user 1e30", _ml(lambda d: _set_line(d / R, 7, "1e30,50,4.0,964982931")), DataError,
     r"ratings.csv, line 7: column 'userId' has value 1e\+30"),
    ("ml user 1e20 digits", _ml(lambda d: _set_line(d / R, 9, "99999999999999999999,50,4.0,964982931")),
     DataError, r"ratings.csv, line 9: column 'userId' has value 99999999999999999999, outside the int64"),
    ("ml user 2**64-1", _ml(lambda d: _set_line(d / R, 9, "18446744073709551615,50,4.0,964982931")),
     DataError, r"ratings.csv, line 9: column 'userId' has value 18446744073709551615, too large"),
    ("ml user inf", _ml(lambda d: _set_line(d / R, 4, "inf,50,4.0,964982931")), DataError,
     r"ratings.csv, line 4: column 'userId' has value inf"),
    ("ml user 2**53+1 among decimals",
     _ml(lambda d: (_set_line(d / R, 3, "9007199254740993,50,4.0,964982931"),
                    _set_line(d / R, 4, "2.0,50,4.0,964982931"))),
     DataError, r"line 3: column 'userId' has value 9007199254740992"),
    ("ml time 1e25", _ml(lambda d: _set_line(d / R, 11, "1,50,4.0,1e25")), DataError,
     r"ratings.csv, line 11: column 'timestamp' has value 1e\+25"),
    ("ml rating 1e300", _ml(lambda d: _set_line(d / R, 12, "1,50,1e300,964982931")), DataError,
     r"ratings.csv, line 12: column 'rating' has value 1e\+300, beyond the float32 range"),
    ("ml movie 1e30", _ml(lambda d: _set_line(d / "movies.csv", 5, "1e30,Title,Comedy")), DataError,
     r"movies.csv, line 5: column 'movieId' has value 1e\+30"),
    ("ml tmdbId 1e30", _ml(lambda d: _set_line(d / "links.csv", 6, "5,0113041,1e30")), DataError,
     r"links.csv, line 6: column 'tmdbId' has value 1e\+30"),
    ("ml tmdbId 2.5", _ml(lambda d: _set_line(d / "links.csv", 6, "5,0113041,2.5")), DataError,
     r"links.csv, line 6: column 'tmdbId' has non-integer value 2.5"),
    ("ml tmdbId text", _ml(lambda d: _set_line(d / "links.csv", 6, "5,0113041,abc")), DataError,
     r"links.csv, line 6: column 'tmdbId' has non-numeric value 'abc'"),
    # MovieLens 1M (.dat) and 100k.
    ("1m truncated", _fmt(_ml_1m, "ratings.dat", lambda p: _truncate_after_field(p, 40, 2, "::")),
     DataError, r"ratings.dat, line 40: column 'rating' is missing"),
    ("1m empty", _fmt(_ml_1m, "ratings.dat", _empty), DataError, "ratings.dat: file is empty"),
    ("1m commas", _fmt(_ml_1m, "ratings.dat", lambda p: _resep(p, "::", ",")), DataError,
     r"ratings.dat, line 1: column 'userId' has non-numeric value"),
    ("1m user 1e30", _fmt(_ml_1m, "ratings.dat", lambda p: _set_line(p, 3, "1e30::50::4::964982931")),
     DataError, r"ratings.dat, line 3: column 'userId' has value '1e30', outside the int64 range"),
    ("1m time 1e25", _fmt(_ml_1m, "ratings.dat", lambda p: _set_line(p, 3, "1::50::4::1e25")),
     DataError, r"ratings.dat, line 3: column 'timestamp' has value '1e25', outside the int64 range"),
    ("100k truncated u.data", _fmt(_ml_100k, "u.data", lambda p: _truncate_after_field(p, 77, 3, "\t")),
     DataError, r"u.data, line 77: column 'timestamp' is missing"),
    ("100k empty u.data", _fmt(_ml_100k, "u.data", _empty), DataError, "u.data: file is empty"),
    ("100k commas in u.data", _fmt(_ml_100k, "u.data", lambda p: _resep(p, "\t", ",")), DataError,
     r"u.data, line 1: column 'userId' has non-numeric value"),
    ("100k huge user", _fmt(_ml_100k, "u.data", lambda p: _set_line(p, 5, "99999999999999999999\t50\t4\t1")),
     DataError, r"u.data, line 5: column 'userId' has value 99999999999999999999, outside the int64"),
    ("100k truncated u.item row", _fmt(_ml_100k, "u.item", lambda p: _truncate_after_field(p, 30, 12, "|")),
     DataError, r"u.item, line 30: genre flag 'Documentary' is missing"),
    ("100k genre flag 7", _fmt(_ml_100k, "u.item", lambda p: _set_line(
        p, 4, "4|Title|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["7"]), "latin-1")),
     DataError, r"u.item, line 4: genre flag 'Western' is 7"),
    ("100k empty u.item", _fmt(_ml_100k, "u.item", _empty), DataError, "u.item: file is empty"),
    # TMDB.
    ("tmdb truncated", _tmdb(lambda p: p.write_bytes(p.read_bytes()[:50_000])), DataError,
     "tmdb_5000_movies.csv"),
    ("tmdb empty", _tmdb(_empty), DataError, "file is empty"),
    ("tmdb utf-16", _tmdb(_utf16), DataError, "not valid utf-8"),
    ("tmdb semicolons", _tmdb(lambda p: _resep(p, ",", ";")), DataError, r"missing column\(s\)"),
    ("tmdb id 1e30", _tmdb(lambda p: _tmdb_cell(p, "id", "1e30")), DataError,
     r"tmdb_5000_movies.csv, line 2: column 'id' has value 1e\+30"),
    ("tmdb id 2**64", _tmdb(lambda p: _tmdb_cell(p, "id", str(2**64))), DataError,
     r"tmdb_5000_movies.csv, line 2: column 'id' has value"),
    ("tmdb genre 5", _tmdb(lambda p: _genres_cell(p, "[5]")), DataError,
     r"line 2: column 'genres' holds 5"),
    ("tmdb genres object", _tmdb(lambda p: _genres_cell(p, '{"name": "Action"}')), DataError,
     r"line 2: column 'genres' is not a JSON list"),
    ("tmdb zip of random bytes", lambda s, t: _tmdb_zip(s, t, b"PK\x03\x04" + bytes(range(256)) * 40),
     DataError, "not a readable zip file"),
    ("tmdb truncated zip", lambda s, t: _tmdb_zip(s, t, _zip_bytes(s)[:300_000]), DataError,
     "not a readable zip file"),
    ("tmdb corrupt zip", lambda s, t: _tmdb_zip(s, t, _flip_middle(_zip_bytes(s))), DataError,
     "not a readable zip file"),
    ("tmdb empty zip", lambda s, t: _tmdb_zip(s, t, b""), DataError, "file is empty"),
    # MicroLens.
    ("microlens titles bad byte", _file(_titles, lambda p: _bad_byte(p, 1234), datasets.load_microlens_titles),
     DataError, r"MicroLens-100k_title_en.csv, line 1234: not valid UTF-8"),
    ("microlens titles utf-16", _file(_titles, _utf16, datasets.load_microlens_titles),
     DataError, r"line 1: not valid UTF-8"),
    ("microlens titles empty", _file(_titles, _empty, datasets.load_microlens_titles), DataError,
     "file is empty"),
    ("microlens titles truncated", _file(_titles, lambda p: _truncate_after_field(p, 500, 1, ","),
                                         datasets.load_microlens_titles),
     DataError, r"line 500: expected 'item_id, title'"),
    ("microlens titles huge id", _file(_titles, lambda p: _set_line(p, 8, "99999999999999999999, x"),
                                       datasets.load_microlens_titles),
     DataError, r"line 8: item id 99999999999999999999 is too large"),
    ("microlens titles tabs", _file(_titles, lambda p: _resep(p, ",", "\t"), datasets.load_microlens_titles),
     DataError, r"line 1: expected 'item_id, title'"),
    ("microlens pairs bad byte in header", _pairs_case(lambda p: _bad_byte(p, 1)), DataError,
     r"pairs.csv, line 1: not valid UTF-8"),
    ("microlens pairs bad byte in a row", _pairs_case(lambda p: _bad_byte(p, 50)), DataError,
     r"pairs.csv"),
    ("microlens pairs empty", _pairs_case(_empty), DataError, "file is empty"),
    ("microlens pairs truncated", _pairs_case(lambda p: _truncate_after_field(p, 101, 2, ",")),
     DataError, r"pairs.csv, line 101: column 'timestamp' is missing"),
    ("microlens pairs semicolons", _pairs_case(lambda p: _resep(p, ",", ";")), DataError,
     r"missing column\(s\)"),
    ("microlens pairs user 1e30", _pairs_case(lambda p: _set_line(p, 20, "1e30,5,1600000000000")),
     DataError, r"pairs.csv, line 20: column 'user' has value 1e\+30"),
    ("microlens pairs time 1e25", _pairs_case(lambda p: _set_line(p, 20, "3,5,1e25")), DataError,
     r"pairs.csv, line 20: column 'timestamp' has value 1e\+25"),
    # Amazon: JSON lines, gzipped JSON lines, CSV.
    ("amazon json bad byte", _json(lambda p: _bad_byte(p, 17)), DataError,
     r"Kindle_Store_5.json, line 17: not valid UTF-8"),
    ("amazon json utf-16", _json(_utf16), DataError, r"line 1: not valid UTF-8"),
    ("amazon json empty", _json(_empty), DataError, "file is empty"),
    ("amazon json truncated", _json(lambda p: p.write_bytes(p.read_bytes()[:-30])), DataError,
     r"line 300: not valid JSON"),
    ("amazon json not objects", _json(lambda p: _set_line(p, 5, "[1, 2, 3]")), DataError,
     r"line 5: expected a JSON object"),
    ("amazon json time 1e25", _json(lambda p: _set_line(
        p, 6, '{"reviewerID": "a", "asin": "b", "overall": 5, "unixReviewTime": 1e25}')),
     DataError, r"line 6: column 'unixReviewTime' has value 1e\+25"),
    ("amazon json time 1e20 digits", _json(lambda p: _set_line(
        p, 6, '{"reviewerID": "a", "asin": "b", "overall": 5, "unixReviewTime": 99999999999999999999}')),
     DataError, r"line 6: column 'unixReviewTime' has value 99999999999999999999"),
    ("amazon gz truncated", _json_gz(lambda p: p.write_bytes(p.read_bytes()[:-200])), DataError,
     "truncated or corrupt gzip file"),
    ("amazon gz corrupt", _json_gz(lambda p: p.write_bytes(_flip_middle(p.read_bytes()))), DataError,
     "truncated or corrupt gzip file"),
    ("amazon gz not gzip", _json_gz(lambda p: p.write_bytes(b"not gzip at all\n" * 10)), DataError,
     "truncated or corrupt gzip file"),
    ("amazon csv truncated", _file(_kindle, lambda p: p.write_bytes(p.read_bytes()[:-2000]),
                                   datasets.load_amazon_reviews), DataError, "kindle_reviews.csv"),
    ("amazon csv empty", _file(_kindle, _empty, datasets.load_amazon_reviews), DataError,
     "file is empty"),
    ("amazon csv utf-16", _file(_kindle, _utf16, datasets.load_amazon_reviews), DataError,
     "kindle_reviews.csv: cannot parse"),
    ("amazon csv semicolons", _file(_kindle, lambda p: _resep(p, ",", ";"), datasets.load_amazon_reviews),
     DataError, "kindle_reviews.csv"),
]  # fmt: skip


@pytest.mark.parametrize("make, error, match", [c[1:] for c in LOADER_CASES],
                         ids=[c[0] for c in LOADER_CASES])  # fmt: skip
def test_loaders_raise_typed_errors(
    shared_data: Path, tmp_path: Path, make: Callable[[Path, Path], Callable[[], object]],
    error: type[Exception], match: str,
) -> None:  # fmt: skip
    load = make(shared_data, tmp_path)
    with pytest.raises(error, match=match):
        load()


def test_uncorrupted_copies_load(shared_data: Path, tmp_path: Path) -> None:
    """The builders above make valid files: each corruption, not the copy, causes its error."""
    (tmp_path / "a").mkdir()
    assert datasets.load_movielens(_ml_csv(shared_data, tmp_path / "a")).n_interactions == N_ROWS
    assert datasets.load_movielens(_ml_1m(shared_data, tmp_path)).n_interactions == N_ROWS
    ds = datasets.load_movielens(_ml_100k(shared_data, tmp_path))
    assert ds.n_interactions == N_ROWS
    assert ds.items["genres"].iloc[0] == "Adventure|Animation|Children's|Comedy|Fantasy"
    assert datasets.load_tmdb(_tmdb_csv(shared_data, tmp_path)).n_items == 4_803
    assert datasets.load_microlens(_pairs(shared_data, tmp_path), _titles(shared_data, tmp_path)).n_interactions == 300
    assert datasets.load_amazon_reviews(_kindle_json(shared_data, tmp_path, gz=True)).n_interactions == 300
    assert datasets.load_amazon_reviews(_kindle_json(shared_data, tmp_path)).n_interactions == 300


def test_two_huge_ids_never_merge(shared_data: Path, tmp_path: Path) -> None:
    """Defect 7: 99999999999999999998 and 99999999999999999999 used to become one user."""
    d = _ml_csv(shared_data, tmp_path)
    _set_line(d / R, 2, "99999999999999999998,50,4.0,964982931")
    _set_line(d / R, 3, "99999999999999999999,50,4.0,964982931")
    with pytest.raises(DataError, match=r"line 2: column 'userId' has value 99999999999999999998, outside"):
        datasets.load_movielens(d)


def test_ids_within_int64_still_load_exactly(shared_data: Path, tmp_path: Path) -> None:
    """Large ids that int64 holds are kept exactly (no detour through float64)."""
    d = _ml_csv(shared_data, tmp_path)
    big = 2**62 + 1
    _set_line(d / R, 2, f"{big},50,4.0,964982931")
    _set_line(d / R, 3, f"{big + 2},50,4.0,964982931")
    ds = datasets.load_movielens(d)
    raw = set(ds.users["userId"].tolist())
    assert {big, big + 2} <= raw and ds.n_users == len(_ratings(shared_data)["userId"].unique()) + 2


def test_tmdb_genres_as_plain_names(shared_data: Path, tmp_path: Path) -> None:
    """Defect 11: a list of strings is a list of names, not an empty list."""
    p = _tmdb_csv(shared_data, tmp_path)
    _genres_cell(p, '["Action", "Drama"]')
    ds = datasets.load_tmdb(p)
    assert ds.items["genres"].iloc[0] == ["Action", "Drama"]
    assert ds.items["genres"].iloc[1] == ["Adventure", "Fantasy", "Action"]  # TMDB's own form


def test_100k_truncated_item_row_is_not_genre_free(shared_data: Path, tmp_path: Path) -> None:
    """Defect 11: a u.item row cut after 3 genre flags used to load with the others as 0."""
    d = _ml_100k(shared_data, tmp_path)
    _truncate_after_field(d / "u.item", 9742, 8, "|")
    with pytest.raises(DataError, match=r"u.item, line 9742: genre flag 'Animation' is missing"):
        datasets.load_movielens(d)


# --- array entry points --------------------------------------------------------------------------

N_U, N_I = 5, 8


def _x() -> Interactions:
    users = np.repeat(np.arange(N_U), 3)
    items = (np.arange(N_U * 3) * 3) % N_I
    return Interactions.from_arrays(users, items, timestamps=np.arange(N_U * 3), n_items=N_I)


def _test() -> Interactions:
    return Interactions.from_arrays(np.arange(N_U), (np.arange(N_U) + 1) % N_I, n_items=N_I)


def _scores(dtype: Any = np.float32) -> np.ndarray:
    return np.arange(N_U * N_I).reshape(N_U, N_I).astype(dtype)


def _neg(values: Any = None) -> np.ndarray:
    n = np.array([[(u + 2) % N_I, (u + 3) % N_I] for u in range(N_U)], dtype=np.int64)
    return n if values is None else np.asarray(values)


def _fa(**kw: Any) -> Callable[[], object]:
    base: dict[str, Any] = dict(users=[0, 1, 2], items=[0, 1, 2])
    base.update(kw)
    return lambda: Interactions.from_arrays(**base)


def _fr(scores: Any, **kw: Any) -> Callable[[], object]:
    return lambda: metrics.full_ranking(scores, _test(), [_x()], **kw)


def _sm(scores: Any = None, negatives: Any = None, **kw: Any) -> Callable[[], object]:
    s = _scores() if scores is None else scores
    return lambda: metrics.sampled(s, _test(), _neg() if negatives is None else negatives, **kw)


ArrayCase = tuple[str, Callable[[], object], type[Exception], str]
ARRAY_CASES: list[ArrayCase] = [
    # Interactions.from_arrays
    ("fa float ids", _fa(users=[0.0, 1.5, 2.0]), DataError, "must hold integers"),
    ("fa nan ids", _fa(users=[0.0, np.nan, 2.0]), DataError, "must hold integers"),
    ("fa str ids", _fa(users=["a", "b", "c"]), DataError, "must hold integers"),
    ("fa object ids", _fa(users=np.array([0, None, 1], dtype=object)), DataError, "must hold integers"),
    ("fa 2-D ids", _fa(users=[[0, 1, 2]]), DataError, "1-D"),
    ("fa ragged ids", _fa(users=[[0], [1, 2]]), DataError, "users"),
    ("fa negative id", _fa(users=[0, -1, 2]), DataError, r"users\[1\] = -1"),
    ("fa id 2**40", _fa(items=[0, 2**40, 1]), DataError, r"items\[1\] = 1099511627776"),
    ("fa uint64 max", _fa(users=np.array([0, 2**64 - 1, 1], dtype=np.uint64)), DataError, "too large"),
    ("fa length mismatch", _fa(items=[0, 1]), DataError, "items has 2"),
    ("fa nan rating", _fa(ratings=[1.0, np.nan, 2.0]), DataError, "not a finite"),
    ("fa inf rating", _fa(ratings=[1.0, np.inf, 2.0]), DataError, "not a finite"),
    ("fa rating beyond float32", _fa(ratings=[1.0, 1e300, 2.0]), DataError,
     r"ratings\[1\] = 1e\+300 is beyond the float32 range"),
    ("fa str ratings", _fa(ratings=["a", "b", "c"]), DataError, "must hold numbers"),
    ("fa nan times", _fa(timestamps=[1.0, np.nan, 2.0]), DataError, "must hold integers"),
    ("fa NaT", _fa(timestamps=np.array(["2020-01-01", "NaT", "2020-01-02"], dtype="datetime64[s]")),
     DataError, "NaT"),
    ("fa sub-second times", _fa(timestamps=np.array(
        ["2020-01-01T00:00:00.9", "2020-01-01T00:00:00.1", "2020-01-01"], dtype="datetime64[ms]")),
     DataError, r"timestamps\[0\] = 2020-01-01T00:00:00.900 is not a whole second"),
    ("fa n_users -1", _fa(n_users=-1), ConfigError, r"n_users must be an integer in 0\.\.="),
    ("fa n_users 2**70", _fa(n_users=2**70), ConfigError, "n_users must be an integer"),
    ("fa n_items 1.5", _fa(n_items=1.5), ConfigError, "n_items must be an integer"),
    ("fa n_items str", _fa(n_items="9"), ConfigError, "n_items must be an integer"),
    ("fa n_users True", _fa(n_users=True), ConfigError, "n_users must be an integer"),
    ("fa n_users too small", _fa(n_users=2), DataError, "n_users = 2 but users contains id 2"),
    ("fa n_users 2**40", _fa(n_users=2**40), DataError, "too large"),
    # metrics.full_ranking
    ("fr 1-D scores", _fr(np.zeros(N_I)), DataError, "shape"),
    ("fr wrong shape", _fr(np.zeros((N_U, N_I + 1))), DataError, "shape"),
    ("fr str scores", _fr(np.full((N_U, N_I), "a")), DataError, "numbers"),
    ("fr bool scores", _fr(np.zeros((N_U, N_I), bool)), DataError, "numbers"),
    ("fr complex scores", _fr(np.zeros((N_U, N_I), complex)), DataError, "numbers"),
    ("fr ragged list", _fr([[1.0, 2.0], [3.0]]), DataError, "array"),
    ("fr nan score", _fr(np.where(np.arange(N_I) == 7, np.nan, _scores(float))), DataError, "NaN"),
    ("fr nan in float64", _fr(np.full((N_U, N_I), np.nan)), DataError, "NaN"),
    ("fr longdouble", _fr(_scores(np.longdouble)), DataError, "cannot be ranked exactly"),
    ("fr uint64 beyond int64", _fr(np.full((N_U, N_I), 2**64 - 1, np.uint64)), DataError,
     "beyond int64"),
    ("fr torch complex", _fr(torch.zeros(N_U, N_I, dtype=torch.complex64)), DataError, "real dtype"),
    ("fr torch bool", _fr(torch.zeros(N_U, N_I, dtype=torch.bool)), DataError, "real dtype"),
    ("fr callable wrong rows", lambda: metrics.full_ranking(lambda u: np.zeros((1, N_I)), _test()),
     DataError, "shape"),
    ("fr callable str", lambda: metrics.full_ranking(lambda u: np.full((len(u), N_I), "x"), _test()),
     DataError, "numbers"),
    ("fr test not interactions", lambda: metrics.full_ranking(_scores(), np.zeros(3)), ConfigError,
     "recforge.Interactions"),
    ("fr ks 0", _fr(_scores(), ks=[0]), ConfigError, "ks"),
    ("fr ks 1.5", _fr(_scores(), ks=[1.5]), ConfigError, "ks"),
    ("fr ks 2**70", _fr(_scores(), ks=[2**70]), ConfigError, "ks"),
    ("fr metric", _fr(_scores(), metrics=["auc"]), ConfigError, "unknown metric"),
    ("fr ties", _fr(_scores(), ties="random"), ConfigError, "ties"),
    ("fr batch 0", _fr(_scores(), batch_size=0), ConfigError, "batch_size"),
    # metrics.sampled
    ("sm float negatives", _sm(negatives=_neg().astype(float)), DataError, "integer item ids"),
    ("sm 1-D negatives", _sm(negatives=np.arange(N_U)), DataError, "negatives must be"),
    ("sm negative id", _sm(negatives=np.full((N_U, 2), -5)), DataError, "out of range"),
    ("sm id n_items", _sm(negatives=np.full((N_U, 1), N_I)), DataError, "out of range"),
    ("sm id 2**40", _sm(negatives=np.full((N_U, 1), 2**40)), DataError, "out of range"),
    ("sm repeated", _sm(negatives=np.stack([_neg()[:, 0]] * 2, axis=1)), DataError, "twice"),
    ("sm test item", _sm(negatives=((np.arange(N_U) + 1) % N_I)[:, None]), DataError, "test item"),
    ("sm nan score", _sm(scores=np.full((N_U, N_I), np.nan)), DataError, "NaN"),
    ("sm str scores", _sm(scores=np.full((N_U, N_I), "s")), DataError, "numbers"),
    ("sm wrong shape", _sm(scores=np.zeros((N_U, 2))), DataError, "shape"),
    # splits
    ("loo short users", lambda: split.leave_one_out(_x(), short_users="keep"), ConfigError, "short_users"),
    ("loo not interactions", lambda: split.leave_one_out([1, 2]), ConfigError, "recforge.Interactions"),
    ("loo raise", lambda: split.leave_one_out(_test(), short_users="raise"), SplitError, "users"),
    ("ratio nan", lambda: split.ratio(_x(), (np.nan, 0.5, 0.5)), ConfigError, "fractions"),
    ("ratio inf", lambda: split.ratio(_x(), (np.inf, 0.0)), ConfigError, "fractions"),
    ("ratio negative", lambda: split.ratio(_x(), (1.2, -0.2)), ConfigError, "fractions"),
    ("ratio text", lambda: split.ratio(_x(), ("a", "b")), ConfigError, "fractions"),
    ("ratio none", lambda: split.ratio(_x(), None), ConfigError, "fractions"),  # type: ignore[arg-type]
    ("ratio four", lambda: split.ratio(_x(), (0.25,) * 4), ConfigError, "fractions"),
    ("ratio seed -1", lambda: split.ratio(_x(), seed=-1), ConfigError, "seed must be an integer"),
    ("ratio seed 2**70", lambda: split.ratio(_x(), seed=2**70), ConfigError, "seed must be an integer"),
    ("ratio seed 1.5", lambda: split.ratio(_x(), seed=1.5), ConfigError, "seed must be an integer"),  # type: ignore[arg-type]
    ("ratio seed None", lambda: split.ratio(_x(), seed=None), ConfigError, "seed must be an integer"),  # type: ignore[arg-type]
    ("ratio order", lambda: split.ratio(_x(), order="sorted"), ConfigError, "order"),  # type: ignore[arg-type]
    ("kcore -1", lambda: split.k_core(_x(), -1), ConfigError, "user_k must be an integer"),
    ("kcore 2**40", lambda: split.k_core(_x(), 2, 2**40), ConfigError, "item_k must be an integer"),
    ("kcore str", lambda: split.k_core(_x(), "2"), ConfigError, "user_k must be an integer"),  # type: ignore[arg-type]
    # sampling
    ("eval n 0", lambda: sampling.eval_negatives(_test(), n=0), ConfigError, "n must be an integer in 1"),
    ("eval n -1", lambda: sampling.eval_negatives(_test(), n=-1), ConfigError, "n must be an integer"),
    ("eval n 2**70", lambda: sampling.eval_negatives(_test(), n=2**70), ConfigError, "n must be an integer"),
    ("eval n 2**40", lambda: sampling.eval_negatives(_test(), n=2**40), DataError, "only 8 items"),
    ("eval n 1.5", lambda: sampling.eval_negatives(_test(), n=1.5), ConfigError, "n must be an integer"),  # type: ignore[arg-type]
    ("eval seed 2**70", lambda: sampling.eval_negatives(_test(), n=2, seed=2**70), ConfigError,
     "seed must be an integer"),
    ("eval seed -1", lambda: sampling.eval_negatives(_test(), n=2, seed=-1), ConfigError,
     "seed must be an integer"),
    ("eval popularity nan", lambda: sampling.eval_negatives(
        _test(), n=2, strategy="popularity", popularity=[np.nan] * N_I), DataError, "popularity"),
    ("eval popularity inf", lambda: sampling.eval_negatives(
        _test(), n=2, strategy="popularity", popularity=[np.inf] * N_I), DataError, "popularity"),
    ("eval popularity negative", lambda: sampling.eval_negatives(
        _test(), n=2, strategy="popularity", popularity=[-1.0] * N_I), DataError, "popularity"),
    ("eval popularity text", lambda: sampling.eval_negatives(
        _test(), n=2, strategy="popularity", popularity=["a"] * N_I), DataError, "popularity"),
    ("eval popularity 2-D", lambda: sampling.eval_negatives(
        _test(), n=2, strategy="popularity", popularity=np.ones((2, N_I))), DataError, "popularity"),
    ("eval popularity short", lambda: sampling.eval_negatives(
        _test(), n=2, strategy="popularity", popularity=np.ones(3)), DataError, "popularity has 3"),
    ("train k 0", lambda: sampling.training_negatives(_x(), 0), ConfigError, "k must be an integer in 1"),
    ("train k 2**70", lambda: sampling.training_negatives(_x(), 2**70), ConfigError, "k must be an integer"),
    ("train k 2**40", lambda: sampling.training_negatives(_x(), 2**40), ConfigError, "more than"),
    ("train k 2**40 distinct", lambda: sampling.training_negatives(_x(), 2**40, replace=False),
     DataError, "only 8 items"),
    ("train epoch -1", lambda: sampling.training_negatives(_x(), epoch=-1), ConfigError,
     "epoch must be an integer"),
    ("train seed 2**70", lambda: sampling.training_negatives(_x(), seed=2**70), ConfigError,
     "seed must be an integer"),
    # statistics
    ("ci text", lambda: stats.bootstrap_ci(["a", "b", "c"]), DataError, "must hold numbers"),
    ("ci 2-D", lambda: stats.bootstrap_ci(np.ones((3, 3))), DataError, "1-D"),
    ("ci nan", lambda: stats.bootstrap_ci([1.0, np.nan, 2.0]), DataError, "not finite"),
    ("ci inf", lambda: stats.bootstrap_ci([1.0, np.inf, 2.0]), DataError, "not finite"),
    ("ci empty", lambda: stats.bootstrap_ci([]), DataError, "at least 2"),
    ("ci one value", lambda: stats.bootstrap_ci([1.0]), DataError, "at least 2"),
    ("ci ragged", lambda: stats.bootstrap_ci([[1.0], [1.0, 2.0]]), DataError, "values"),
    ("ci resamples -1", lambda: stats.bootstrap_ci([1.0, 2.0], n_resamples=-1), ConfigError,
     "n_resamples must be an integer"),
    ("ci resamples 2**70", lambda: stats.bootstrap_ci([1.0, 2.0], n_resamples=2**70), ConfigError,
     "n_resamples must be an integer"),
    ("ci resamples 2**40", lambda: stats.bootstrap_ci([1.0, 2.0], n_resamples=2**40), ConfigError,
     "more than"),
    ("ci seed 2**70", lambda: stats.bootstrap_ci([1.0, 2.0], seed=2**70), ConfigError,
     "seed must be an integer"),
    ("ci seed -1", lambda: stats.bootstrap_ci([1.0, 2.0], seed=-1), ConfigError, "seed must be an integer"),
    ("ci confidence nan", lambda: stats.bootstrap_ci([1.0, 2.0], confidence=np.nan), ConfigError,
     "confidence"),
    ("ci method", lambda: stats.bootstrap_ci([1.0, 2.0], method="normal"), ConfigError, "method"),  # type: ignore[arg-type]
    ("paired lengths", lambda: stats.paired_bootstrap([1.0, 2.0], [1.0, 2.0, 3.0]), DataError,
     "differ in length"),
    ("paired seed 2**70", lambda: stats.paired_bootstrap([1.0, 2.0], [1.0, 2.0], seed=2**70),
     ConfigError, "seed must be an integer"),
    ("rmse text", lambda: stats.rmse(["a", "b"], [1.0, 2.0]), DataError, "numbers"),
    ("rmse nan", lambda: stats.rmse([1.0, np.nan], [1.0, 2.0]), DataError, "not finite"),
]  # fmt: skip


@pytest.mark.parametrize("call, error, match", [c[1:] for c in ARRAY_CASES],
                         ids=[c[0] for c in ARRAY_CASES])  # fmt: skip
def test_array_entry_points_raise_typed_errors(
    call: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()


def test_every_sweep_error_is_a_recforge_error() -> None:
    """The classes the tables expect are all recforge's own (``except RecforgeError`` catches
    every case)."""
    for cases in (LOADER_CASES, ARRAY_CASES):
        for case in cases:
            assert issubclass(case[2], RecforgeError), case[0]


# --- defect 6: scores are ranked in their own precision -----------------------------------------


def _one_user(n_items: int = 24) -> Interactions:
    return Interactions.from_arrays([0], [1], n_users=1, n_items=n_items)


@pytest.mark.parametrize(
    "scores",
    [
        pytest.param(lambda: np.r_[1000.0, 1000.00001, np.full(22, 1000.0)], id="float64 1000.00001"),
        pytest.param(lambda: np.r_[2**40, 2**40 + 1, np.full(22, 2**40)].astype(np.int64), id="int64 2**40"),
        pytest.param(lambda: np.r_[2**53, 2**53 + 1, np.full(22, 2**53)].astype(np.int64), id="int64 2**53"),
        pytest.param(lambda: np.r_[2**62, 2**62 + 1, np.full(22, 2**62)].astype(np.uint64), id="uint64 2**62"),
        pytest.param(lambda: torch.tensor(np.r_[1000.0, 1000.00001, np.full(22, 1000.0)]), id="torch float64"),
        pytest.param(lambda: torch.tensor([2**40, 2**40 + 1] + [2**40] * 22), id="torch int64"),
    ],
)  # fmt: skip
def test_full_ranking_keeps_strict_orders(scores: Callable[[], Any]) -> None:
    """Defect 6: float64 and int64 scores used to be cast to float32 (Hit@1 0.042 instead of 1)."""
    s = scores()
    s = s[None, :] if isinstance(s, np.ndarray) else s[None, :]
    r = metrics.full_ranking(s, _one_user(), ks=[1], metrics=["hit", "ndcg"])
    assert r["hit@1"] == 1.0 and r["ndcg@1"] == 1.0
    # The same through a callable and through batches.
    r = metrics.full_ranking(lambda u: s, _one_user(), ks=[1], metrics=["hit"], batch_size=1)
    assert r["hit@1"] == 1.0


def test_full_ranking_float64_many_users_and_coverage() -> None:
    """Non-contiguous float64 rows (fancy-indexed per batch) keep their order too, and coverage
    over huge k costs nothing (tables stop at n_items)."""
    n_u, n_i = 6, 10
    base = np.full((n_u, n_i), 1e6)
    test_items = np.arange(n_u) % n_i
    base[np.arange(n_u), test_items] += 1e-7
    test = Interactions.from_arrays(np.arange(n_u), test_items, n_items=n_i)
    strided = np.asfortranarray(base)
    r = metrics.full_ranking(strided, test, ks=[1, 2**40], metrics=["hit", "ndcg", "coverage"], batch_size=4)
    assert r["hit@1"] == 1.0 and r["ndcg@1"] == 1.0 and r[f"hit@{2**40}"] == 1.0
    assert r["coverage@1"] == n_u / n_i and r[f"coverage@{2**40}"] == 1.0
    f32 = metrics.full_ranking(base.astype(np.float32), test, ks=[1], metrics=["hit"])
    assert f32["hit@1"] == pytest.approx(1 / n_i)  # what the old cast gave: a 10-way tie


def test_sampled_keeps_strict_orders() -> None:
    s = np.r_[2**53 + 1, 2**53, 2**53, 2**53].astype(np.int64)[None, :]
    test = Interactions.from_arrays([0], [0], n_items=4)
    r = metrics.sampled(s, test, np.array([[1, 2, 3]]), ks=[1], metrics=["hit"])
    assert r["hit@1"] == 1.0
    f = np.r_[1000.00001, 1000.0, 1000.0, 1000.0][None, :]
    assert metrics.sampled(f, test, np.array([[1, 2, 3]]), ks=[1], metrics=["hit"])["hit@1"] == 1.0


def test_popularity_weights_are_not_narrowed() -> None:
    """A weight of 1e-50 is tiny but positive: it must stay drawable (float32 made it 0)."""
    test = Interactions.from_arrays([0], [0], n_items=3)
    w = np.array([1.0, 1e-50, 0.0])
    neg = sampling.eval_negatives(test, n=1, strategy="popularity", popularity=w, seed=0)
    assert neg.tolist() == [[1]]


# --- defect 11: sub-second times are never truncated ---------------------------------------------


def test_sub_second_times_are_refused_not_reordered() -> None:
    """Two events 0.8 s apart within one second: truncated to seconds they tie and row order used to
    make the earlier one the left-out test item."""
    t = np.array(["2020-01-01T00:00:00.900", "2020-01-01T00:00:00.100", "2020-01-01T00:00:00.000"],
                 dtype="datetime64[ms]")  # fmt: skip
    with pytest.raises(DataError, match="not a whole second"):
        Interactions.from_arrays([0, 0, 0], [0, 1, 2], timestamps=t)
    ns = t.astype("datetime64[ns]")
    with pytest.raises(DataError, match="not a whole second"):
        Interactions.from_arrays([0, 0, 0], [0, 1, 2], timestamps=ns)
    # The remedy the message names: integers of the finer unit, which keep the true order.
    x = Interactions.from_arrays([0, 0, 0], [0, 1, 2], timestamps=t.astype("int64"))
    _, _, test = split.leave_one_out(x)
    assert test.to_arrays()["items"].tolist() == [0]
    # Whole seconds in any unit are stored as seconds, as before.
    whole = np.array(["2020-01-01T00:00:05", "2020-01-01T00:00:01"], dtype="datetime64[ns]")
    y = Interactions.from_arrays([0, 0], [0, 1], timestamps=whole)
    assert y.to_arrays()["timestamps"].tolist() == [1577836801, 1577836805]


def test_times_beyond_int64_seconds_are_refused() -> None:
    far = np.array([2**62], dtype="datetime64[D]")
    with pytest.raises(DataError, match=r"timestamps\[0\] = .* is beyond int64 seconds"):
        Interactions.from_arrays([0], [0], timestamps=far)


# --- issue 18: values that do not fit are DataErrors naming the argument, position and value ----
# (with numpy 2.x these used to surface as numpy's OverflowError, a misleading dtype message, or a
# silent wrap; the checks are in src/python/convert.rs and do not depend on numpy's casts)

FIT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("uint64 2**63 users", dict(users=np.array([0, 2**63, 1], dtype=np.uint64)),
     r"users\[1\] = 9223372036854775808 is too large: users must fit in int64"),
    ("uint64 2**63 items", dict(items=np.array([0, 1, 2**63], dtype=np.uint64)),
     r"items\[2\] = 9223372036854775808 is too large"),
    ("pandas uint64 2**63", dict(users=pd.Series(np.array([0, 2**63, 1], dtype=np.uint64))),
     r"users\[1\] = 9223372036854775808 is too large"),
    ("int64 above u32", dict(users=np.array([0, 2**32, 1], dtype=np.int64)),
     r"users\[1\] = 4294967296 is not a valid dense id \(ids must be in 0\.\.4294967295\)"),
    ("int64 max", dict(items=np.array([0, 1, 2**63 - 1], dtype=np.int64)),
     r"items\[2\] = 9223372036854775807 is not a valid dense id"),
    ("numpy -1", dict(users=np.array([0, -1, 1])), r"users\[1\] = -1 is not a valid dense id"),
    ("list 2**70", dict(users=[0, 2**70, 1]), r"users\[1\] = 1180591620717411303424 is too large"),
    ("list 2**64", dict(items=[0, 1, 2**64]), r"items\[2\] = 18446744073709551616 is too large"),
    # numpy makes [0, 2**63, 1] float64: the message names the integer, not the float dtype
    ("list 2**63", dict(users=[0, 2**63, 1]), r"users\[1\] = 9223372036854775808 is too large"),
    ("list -2**63-1", dict(users=[0, -(2**63) - 1, 1]), r"users\[1\] = -9223372036854775809 is too small"),
    ("list -2**70", dict(items=[0, -(2**70), 1]), r"items\[1\] = -1180591620717411303424 is too small"),
    ("tuple 2**70", dict(users=(0, 1, 2**70)), r"users\[2\] = 1180591620717411303424 is too large"),
    ("object 2**70", dict(users=np.array([0, 2**70, 1], dtype=object)),
     r"users\[1\] = 1180591620717411303424 is too large"),
    ("object uint64 2**63", dict(users=np.array([0, np.uint64(2**63), 1], dtype=object)),
     r"users\[1\] = 9223372036854775808 is too large"),
    ("list 2**70 before a float", dict(users=[0, 2**70, 1.5]), r"users\[1\] = 1180591620717411303424 is too large"),
    ("float nan array", dict(users=np.array([0.0, np.nan, 1.0])),
     r"users must hold integers, got an array of dtype float64 \(users\[1\] = nan\)"),
    ("float 1.5 array", dict(items=np.array([0.0, 1.0, 1.5])),
     r"items must hold integers, got an array of dtype float64 \(items\[2\] = 1\.5\)"),
    ("float whole array", dict(users=np.array([0.0, 1.0, 2.0])),
     r"users must hold integers, got an array of dtype float64 \(whole numbers too: pass users\.astype\('int64'\)\)"),
    ("float inf list", dict(users=[0, float("inf"), 1]), r"users must hold integers.*\(users\[1\] = inf\)"),
    ("list int and str", dict(users=[0, "a", 1]), r"users must hold integers.*\(users\[1\] = 'a'\)"),
    ("bool array", dict(users=np.array([False, True, True])), r"users must hold integers.*\(users\[0\] = False\)"),
    ("object bool", dict(users=np.array([0, True, 1], dtype=object)),
     r"users must hold integers: users\[1\] = True is not one"),
    ("object float", dict(users=np.array([0, 1.0, 2], dtype=object)),
     r"users must hold integers: users\[1\] = 1\.0 is not one"),
    ("masked array", dict(users=np.ma.array([0, 1, 2], mask=[False, True, False])),
     r"users\[1\] is missing \(masked or NA\)"),
    ("pandas Int64 NA", dict(items=pd.array([0, 1, None], dtype="Int64")), r"items\[2\] is missing"),
    ("timestamps uint64 2**63", dict(timestamps=np.array([0, 2**63, 1], dtype=np.uint64)),
     r"timestamps\[1\] = 9223372036854775808 is too large: timestamps must fit in int64"),
    ("timestamps list 2**70", dict(timestamps=[0, 1, 2**70]),
     r"timestamps\[2\] = 1180591620717411303424 is too large"),
    ("timestamps nan", dict(timestamps=np.array([0.0, np.nan, 1.0])),
     r"timestamps must hold integers.*\(timestamps\[1\] = nan\)"),
    ("timestamps masked", dict(timestamps=np.ma.array([0, 1, 2], mask=[False, False, True])),
     r"timestamps\[2\] is missing"),
    # numpy 2.4 cannot even compute the s <-> as factor (OverflowError); numpy 2.5 raises
    # OverflowError for W/D/h/m beyond int64 seconds and wraps Y/M silently
    ("datetime64[as] sub-second", dict(timestamps=np.array([0, 1, 2 * 10**18], dtype="datetime64[as]")),
     r"timestamps\[1\] = 1970-01-01T00:00:00\.000000000000000001 is not a whole second"),
    *[(f"datetime64[{u}] {sign}2**62", dict(timestamps=np.array([0, sign * 2**62, 1], dtype=f"datetime64[{u}]")),
       rf"timestamps\[1\] = .* is beyond int64 seconds: .*\(datetime64\[{u}\]\)")
      for u in ("Y", "M", "W", "D", "h", "m") for sign in (1, -1)],
    ("datetime64[3M] beyond", dict(timestamps=np.array([0, 2**61, 1], dtype="datetime64[3M]")),
     r"timestamps\[1\] = .* is beyond int64 seconds"),
    ("datetime64[25h] beyond", dict(timestamps=np.array([0, 2**50, 1], dtype="datetime64[25h]")),
     r"timestamps\[1\] = .* is beyond int64 seconds"),
    ("datetime64 NaT", dict(timestamps=np.array([0, 1, "NaT"], dtype="datetime64[D]")),
     r"timestamps contains NaT \(missing times\): timestamps\[2\]"),
    ("datetime64 generic NaT", dict(timestamps=np.array(["NaT"] * 3, dtype="datetime64")), "NaT"),
    ("datetime64 generic unit", dict(timestamps=np.zeros(3, dtype="datetime64")),
     "datetime unit datetime64, which has no length in seconds"),
]  # fmt: skip


@pytest.mark.parametrize("kw, match", [c[1:] for c in FIT_CASES], ids=[c[0] for c in FIT_CASES])
def test_values_that_do_not_fit_are_data_errors(kw: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = dict(users=[0, 1, 2], items=[0, 1, 2])
    args.update(kw)
    with pytest.raises(DataError, match=match):
        Interactions.from_arrays(**args)


def test_object_arrays_of_integers_are_read_exactly() -> None:
    """An object array (a pandas object column) of Python / NumPy integers is read as int64."""
    users = np.array([0, np.int64(1), np.uint8(2), 2], dtype=object)
    x = Interactions.from_arrays(users, pd.Series([3, 2, 1, 0], dtype=object),
                                 timestamps=np.array([5, 2**40, np.uint32(7), -3], dtype=object))  # fmt: skip
    a = x.to_arrays()
    order = np.argsort(a["rows"])
    assert a["users"][order].tolist() == [0, 1, 2, 2]
    assert a["items"][order].tolist() == [3, 2, 1, 0]
    assert a["timestamps"][order].tolist() == [5, 2**40, 7, -3]


# (unit, count, values) of datetime64 steps that are whole seconds within int64, negative ones
# (before 1970) included; the reference is numpy's own cast where numpy computes it exactly.
_DT_UNITS = [("Y", 1, (-3000, -1, 0, 1, 30, 400, 2**20)), ("M", 1, (-25_000, -13, -1, 0, 1, 11, 12, 600_000)),
             ("M", 3, (-7, -1, 0, 1, 5, 4001)), ("W", 1, (-9, 0, 3, 2**30)), ("D", 1, (-800_000, -1, 0, 19_000)),
             ("h", 1, (-5, 0, 7, 2**40)), ("h", 25, (-2, 0, 3)), ("m", 1, (-61, 0, 59, 2**50)),
             ("s", 2, (-2**61, -1, 0, 1, 2**61)), ("ms", 1, (-3000, 0, 1_000, 2**40 * 1000)),
             ("ms", 500, (-4, 0, 2, 6)), ("us", 1, (-(10**6), 0, 5 * 10**6)), ("ns", 1, (-(10**9), 0, 2**30 * 10**9)),
             ("ps", 1, (-(10**12), 0, 10**12 * 7)), ("fs", 1, (-(10**15), 0, 10**15 * 9))]  # fmt: skip


@pytest.mark.parametrize("unit, count, values", _DT_UNITS, ids=[f"{c}{u}" for u, c, _ in _DT_UNITS])
def test_datetime_units_match_numpy(unit: str, count: int, values: tuple[int, ...]) -> None:
    t = np.array(values, dtype=f"datetime64[{count}{unit}]")
    x = Interactions.from_arrays([0] * len(values), list(range(len(values))), timestamps=t)
    a = x.to_arrays()
    got = a["timestamps"][np.argsort(a["rows"])]
    assert got.tolist() == t.astype("datetime64[s]").astype(np.int64).tolist()


def test_attosecond_whole_seconds_and_layouts() -> None:
    """datetime64[as] (numpy cannot cast it to seconds), big-endian and strided arrays."""
    a = np.array([-(10**18), 0, 9 * 10**18], dtype="datetime64[as]")
    x = Interactions.from_arrays([0, 0, 0], [0, 1, 2], timestamps=a)
    assert sorted(x.to_arrays()["timestamps"].tolist()) == [-1, 0, 9]
    big_endian = np.array([3, 1, 2], dtype=">M8[s]")
    y = Interactions.from_arrays([0, 0, 0], [0, 1, 2], timestamps=big_endian).to_arrays()
    assert y["timestamps"][np.argsort(y["rows"])].tolist() == [3, 1, 2]
    strided = np.array([1, 99, 2, 99, 3], dtype="datetime64[D]")[::2]
    z = Interactions.from_arrays([0, 0, 0], [0, 1, 2], timestamps=strided).to_arrays()
    assert z["timestamps"][np.argsort(z["rows"])].tolist() == [86_400, 2 * 86_400, 3 * 86_400]
