"""Fetching datasets from their official URLs (for machines with internet access)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, StorageError

log = logging.getLogger(__name__)

#: Official download locations (GroupLens). GroupLens publishes an ``.md5`` file beside each zip,
#: which :func:`download` fetches and checks; recforge stores no checksums of its own.
URLS: dict[str, str] = {
    "ml-latest-small": "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
    "ml-latest": "https://files.grouplens.org/datasets/movielens/ml-latest.zip",
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "ml-25m": "https://files.grouplens.org/datasets/movielens/ml-25m.zip",
    "ml-32m": "https://files.grouplens.org/datasets/movielens/ml-32m.zip",
}

NOT_DOWNLOADABLE = {
    "tmdb-5000": "TMDB 5000 is distributed on Kaggle behind a login: download "
    "tmdb_5000_movies.csv by hand and use load_tmdb(path)",
    "microlens-100k": "MicroLens is distributed by its authors (github.com/westlake-repl/MicroLens): "
    "download MicroLens-100k_pairs.csv and MicroLens-100k_title_en.csv by hand",
    "amazon-kindle": "Amazon review data requires accepting its terms: download the 5-core file "
    "by hand and use load_amazon_reviews(path)",
}


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(part, "wb") as f, tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.URLError as e:
        part.unlink(missing_ok=True)
        raise StorageError(f"downloading {url} failed: {e}") from None
    os.replace(part, dest)


def _published_md5(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url + ".md5", timeout=timeout) as resp:
            text = resp.read().decode("ascii", errors="replace").strip()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise StorageError(f"fetching the checksum {url}.md5 failed: {e}") from None
    except urllib.error.URLError as e:
        raise StorageError(f"fetching the checksum {url}.md5 failed: {e}") from None
    # "MD5 (file.zip) = hex" or "hex  file.zip"
    token = text.split("=")[-1].strip().split()[0] if "=" in text else text.split()[0]
    if len(token) != 32 or any(c not in "0123456789abcdefABCDEF" for c in token):
        raise DataError(f"{url}.md5: not an MD5 checksum: {text[:80]!r}")
    return token.lower()


def _safe_extract(zip_path: Path, into: Path) -> None:
    root = into.resolve()
    with zipfile.ZipFile(zip_path) as z:
        for m in z.infolist():
            target = (into / m.filename).resolve()
            if root != target and root not in target.parents:
                raise DataError(f"{zip_path}: member {m.filename!r} would unpack outside {into}")
        z.extractall(into)


def download(
    name: str,
    directory: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download dataset ``name`` (see ``URLS``) into ``directory`` and unpack it where the loaders
    look: returns the dataset folder (e.g. ``directory/ml-25m``), ready for ``load_movielens``.

    The zip is written to a ``.part`` file and renamed when complete, so an interrupted download
    never looks finished. When the server publishes ``<zip>.md5`` the download is checked against
    it (a mismatch is a DataError and the zip is deleted). ``base_url`` (or the environment variable
    ``RECFORGE_DOWNLOAD_BASE``) replaces the folder of the official URL, e.g. for a mirror.
    An existing folder is reused unless ``force=True``.
    """
    if name in NOT_DOWNLOADABLE:
        raise ConfigError(f"{name}: {NOT_DOWNLOADABLE[name]}")
    if name not in URLS:
        raise ConfigError(f"unknown dataset {name!r}; downloadable: {sorted(URLS)}")
    url = URLS[name]
    base = base_url or os.environ.get("RECFORGE_DOWNLOAD_BASE")
    if base:
        url = base.rstrip("/") + "/" + url.rsplit("/", 1)[1]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / name
    if folder.is_dir() and any(folder.iterdir()) and not force:
        log.info("%s already present, not downloading", folder)
        return folder
    zip_path = out / url.rsplit("/", 1)[1]
    _fetch(url, zip_path, progress=progress, timeout=timeout)
    expected = _published_md5(url, timeout)
    if expected is not None:
        h = hashlib.md5()
        with open(zip_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != expected:
            zip_path.unlink()
            raise DataError(
                f"{url}: checksum mismatch (got md5 {h.hexdigest()}, published {expected}); "
                "the download was deleted"
            )
    else:
        log.warning("%s: no published checksum (.md5) found; not verified", url)
    if force and folder.exists():
        shutil.rmtree(folder)
    _safe_extract(zip_path, out)
    zip_path.unlink()
    if not folder.is_dir():
        raise DataError(f"{url}: the archive did not contain a {name}/ folder")
    return folder
