"""recforge.datasets.download against a local HTTP server on 127.0.0.1 (no test reaches the internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from recforge import datasets
from recforge.errors import ConfigError, DataError, StorageError


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serves tmp_path/www on an ephemeral loopback port."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/datasets/movielens", www
    finally:
        httpd.shutdown()
        httpd.server_close()


def _zip_ml_small(shared: Path, www: Path) -> Path:
    folder = www / "datasets" / "movielens"
    folder.mkdir(parents=True)
    z = folder / "ml-latest-small.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for p in sorted((shared / "ml-latest-small").iterdir()):
            f.write(p, f"ml-latest-small/{p.name}")
    return z


def test_download_verifies_the_published_md5_and_unpacks(
    shared_data: Path, server: tuple[str, Path], tmp_path: Path
) -> None:
    base, www = server
    z = _zip_ml_small(shared_data, www)
    digest = hashlib.md5(z.read_bytes()).hexdigest()
    Path(str(z) + ".md5").write_text(f"MD5 (ml-latest-small.zip) = {digest}\n")
    out = tmp_path / "data"
    folder = datasets.download("ml-latest-small", out, base_url=base, progress=False)
    assert folder == out / "ml-latest-small"
    assert datasets.load_movielens(folder).n_interactions == 100_836
    assert not list(out.glob("*.zip")) and not list(out.glob("*.part"))
    # Present already: reused without a request (the server's copy is gone now).
    z.unlink()
    assert datasets.download("ml-latest-small", out, base_url=base, progress=False) == folder


def test_checksum_mismatch_is_an_error_and_deletes_the_zip(
    shared_data: Path, server: tuple[str, Path], tmp_path: Path
) -> None:
    base, www = server
    z = _zip_ml_small(shared_data, www)
    Path(str(z) + ".md5").write_text("0" * 32 + "  ml-latest-small.zip\n")
    out = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch"):
        datasets.download("ml-latest-small", out, base_url=base, progress=False)
    assert not (out / "ml-latest-small.zip").exists()
    assert not (out / "ml-latest-small").exists()


def test_without_published_checksum_the_download_still_works(
    shared_data: Path, server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, www = server
    _zip_ml_small(shared_data, www)
    monkeypatch.setenv("RECFORGE_DOWNLOAD_BASE", base)
    folder = datasets.download("ml-latest-small", tmp_path / "d", progress=False)
    assert datasets.load_movielens(folder).n_users == 610


def test_missing_file_unknown_names_and_zip_slip(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    with pytest.raises(StorageError, match="404"):
        datasets.download("ml-1m", tmp_path / "x", base_url=base, progress=False)
    with pytest.raises(ConfigError, match="unknown dataset"):
        datasets.download("ml-7m", tmp_path)
    with pytest.raises(ConfigError, match="Kaggle"):
        datasets.download("tmdb-5000", tmp_path)
    folder = www / "datasets" / "movielens"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "ml-100k.zip", "w") as f:
        f.writestr("../evil.txt", "x")
    with pytest.raises(DataError, match="outside"):
        datasets.download("ml-100k", tmp_path / "y", base_url=base, progress=False)
    assert not (tmp_path / "evil.txt").exists()
