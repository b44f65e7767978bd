"""The reference systems assembled end to end: a config in, tables + plots + a resumable run
folder out.

Each pipeline is one function with a config dataclass (every default documented) and a result
object holding pandas tables, with ``.plot()`` (matplotlib) and ``.save(dir)``. Its run folder
holds ``config.json``, the tables as CSV, the plots as PNG, the LLM response cache and
``results.json`` (versions, seed, protocol); running again with the same folder redoes no
finished LLM call or training.

- :func:`run_s1` (S1): NFM top-20 lists re-ranked by a text encoder and by a chat LLM
  (:mod:`recforge.pipelines.rerank_s1`).
- :func:`run_s5` (S5): LLM-written against human TMDB keywords as Factorization Machine features,
  with Optuna per feature group and paired bootstrap statistics
  (:mod:`recforge.pipelines.keywords_s5`).
- :func:`run_s3` (S3): the SVD + LLM movie assistant's offline evaluation (SVD alone against SVD
  + LLM re-scoring on hidden ratings), plus :func:`assistant_session` / :class:`MovieAssistant`
  (a session for a new person) and :func:`generate_data` (:mod:`recforge.pipelines.assistant_s3`).
"""

from __future__ import annotations

from .assistant_s3 import MovieAssistant, S3Config, S3Result, SessionResult, assistant_session, generate_data, run_s3
from .keywords_s5 import S5Config, S5Result, run_s5
from .rerank_s1 import S1Config, S1Result, run_s1

__all__ = [
    "MovieAssistant", "S1Config", "S1Result", "S3Config", "S3Result", "S5Config", "S5Result", "SessionResult",
    "assistant_session", "generate_data", "run_s1", "run_s3", "run_s5",
]  # fmt: skip
