"""Datasets: loaders for the original file formats, the built-in MovieLens latest-small, and
downloads from official URLs.

Every loader returns a :class:`Dataset` (``.interactions``, ``.items``, ``.users``, id maps,
``.stats``); bad files raise :class:`recforge.errors.DataError` naming the file and line.
"""

from __future__ import annotations

from ._dataset import Dataset
from .amazon import load_amazon_reviews
from .download import URLS, download
from .microlens import load_microlens, load_microlens_titles
from .movielens import load_movielens, movielens_small
from .tmdb import attach_tmdb, load_tmdb

__all__ = [
    "URLS",
    "Dataset",
    "attach_tmdb",
    "download",
    "load_amazon_reviews",
    "load_microlens",
    "load_microlens_titles",
    "load_movielens",
    "load_tmdb",
    "movielens_small",
]
