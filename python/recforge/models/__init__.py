"""Recommendation models trained in the Rust core on libtorch (CPU or CUDA).

Every model has ``fit(train, valid=None, ...)``, ``predict(users, items)``, ``score_all(users)``
(full-ranking scores, usable directly by :func:`recforge.metrics.full_ranking`),
``recommend(users, k, exclude_seen=True, exclude=None)``, ``save(path)`` and
``load(path, device="auto")``. They share one trainer in the Rust core (``recforge._native._Trainer``).
"""

from ._base import FactorModel, LrSchedule, Recommender, TorchModel
from .bprmf import BPRMF
from .fm import FM, NFM
from .hierarchical import HierarchicalRec
from .popularity import Popularity
from .sasrec import SASRec
from .soft_token import SoftTokenRec
from .svd import SVD

__all__ = ["BPRMF", "FM", "FactorModel", "HierarchicalRec", "LrSchedule", "NFM", "Popularity", "Recommender", "SASRec", "SVD", "SoftTokenRec", "TorchModel"]
