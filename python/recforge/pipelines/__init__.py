"""The reference systems assembled end to end: a config in, tables + plots + a resumable run
folder out.

Each pipeline is one function with a config dataclass (every default documented) and a result
object holding pandas tables, with ``.plot()`` (matplotlib) and ``.save(dir)``. Its run folder
holds ``config.json``, the tables as CSV, the plots as PNG, the LLM response cache and
``results.json`` (versions, seed, protocol); running again with the same folder redoes no
finished LLM call or training.

- :func:`run_s1` (S1): NFM top-20 lists re-ranked by a text encoder and by a chat LLM
  (:mod:`recforge.pipelines.rerank_s1`).
"""

from __future__ import annotations

from .rerank_s1 import S1Config, S1Result, run_s1

__all__ = ["S1Config", "S1Result", "run_s1"]
