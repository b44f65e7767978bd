"""SASRec: the forward pass equals a PyTorch module built from torch.nn (MultiheadAttention,
LayerNorm) with the same weights, it learns on the bundled ml-latest-small, and it resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import recforge
from recforge import Interactions, metrics, models
from recforge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def loo() -> recforge.split.SplitResult:
    return recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d)])


class TorchSASRec(nn.Module):
    """Reference: pre-LN causal self-attention written with torch.nn modules."""

    def __init__(self, n_items: int, d: int, max_len: int, n_layers: int, heads: int) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, d)
        self.pos_emb = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(n_layers)])
        self.final_ln = nn.LayerNorm(d)
        self.heads = heads

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        b, l = seq.shape
        valid = seq != 0
        x = (self.item_emb(seq) + self.pos_emb.weight[:l]) * valid.unsqueeze(-1)
        allowed = torch.tril(torch.ones(l, l, dtype=torch.bool)) & valid.unsqueeze(1)
        allowed |= torch.eye(l, dtype=torch.bool)
        blocked = (~allowed).repeat_interleave(self.heads, 0)  # [B * heads, L, L]
        for blk in self.blocks:
            q = blk.ln1(x)
            a, _ = blk.attn(q, q, q, attn_mask=blocked, need_weights=False)
            x = x + a
            f = blk.ffn[1](torch.relu(blk.ffn[0](blk.ln2(x))))
            x = (x + f) * valid.unsqueeze(-1)
        h = self.final_ln(x)
        return h[:, -1] @ self.item_emb.weight[1:].T


def padded(x: Interactions, users: np.ndarray, max_len: int) -> torch.Tensor:
    """Each user's last max_len items (+1), left-padded with 0: written out in NumPy."""
    out = np.zeros((len(users), max_len), dtype=np.int64)
    for r, u in enumerate(users):
        items = x.indices[x.indptr[u] : x.indptr[u + 1]][-max_len:]
        if len(items):
            out[r, max_len - len(items) :] = items + 1
    return torch.from_numpy(out)


@pytest.mark.parametrize("heads", [1, 2])
def test_forward_equals_a_torch_nn_reference(loo, heads: int) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    seen = Interactions.concat([train, valid])
    m = models.SASRec(dim=16, n_heads=heads, max_len=40, epochs=1, loss="bce", lr=0.01, init_std=0.2, device="cpu")
    m.fit(train, progress=False)
    ref = TorchSASRec(train.n_items, 16, 40, 2, heads)
    ref.load_state_dict(m.state_dict(), strict=True)
    ref.eval()
    # Users with short, long and no histories (user 0's history is replaced by an empty one below).
    users = np.array([0, 1, 5, 17, 300, 609])
    lens = np.diff(train.indptr)[users]
    assert lens.min() < 40 < lens.max()
    with torch.no_grad():
        for hist in (train, seen):
            want = ref(padded(hist, users, 40))
            got = m.score_all(users, history=hist)
            assert got.shape == (len(users), train.n_items)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    got_pred = m.predict(users, [3, 4, 5, 6, 7, 8])
    assert np.allclose(got_pred, m.score_all(users).numpy()[np.arange(6), [3, 4, 5, 6, 7, 8]], atol=1e-5)
    empty = Interactions.from_arrays([1], [2], n_users=train.n_users, n_items=train.n_items)
    with torch.no_grad():
        want = ref(padded(empty, np.array([0]), 40))
    assert torch.allclose(m.score_all([0], history=empty), want, atol=1e-4)


def test_sasrec_beats_popularity_on_leave_one_out(loo) -> None:  # type: ignore[no-untyped-def]
    train, valid, test = loo
    seen = Interactions.concat([train, valid])
    m = models.SASRec(epochs=15, lr=0.002, device="cpu").fit(train, progress=False)
    pop = metrics.full_ranking(models.Popularity().fit(seen).score_all, test, [seen], ks=(10,), metrics=("ndcg", "hit"))
    r = metrics.full_ranking(lambda u: m.score_all(u, history=seen), test, [seen], ks=(10,), metrics=("ndcg", "hit"))
    print(f"NDCG@10: SASRec {r['ndcg@10']:.4f}, popularity {pop['ndcg@10']:.4f}")
    assert r["ndcg@10"] > 1.3 * pop["ndcg@10"]
    assert r["hit@10"] > pop["hit@10"]
    assert m.history[-1]["loss"] < m.history[0]["loss"]


def test_resume_and_same_seed(loo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    kw = dict(dim=16, max_len=20, loss="bce", device="cpu", epochs=5)
    straight = models.SASRec(**kw).fit(train, valid, progress=False)  # type: ignore[arg-type]
    again = models.SASRec(**kw).fit(train, valid, progress=False)  # type: ignore[arg-type]
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in again.history]
    part = models.SASRec(**kw).fit(train, valid, epochs=2, checkpoint_dir=tmp_path, progress=False)  # type: ignore[arg-type]
    assert len(part.history) == 2
    resumed = models.SASRec(**kw).fit(train, valid, checkpoint_dir=tmp_path, resume=True, progress=False)  # type: ignore[arg-type]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    for k, v in straight.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-5), k


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="n_heads"):
        models.SASRec(dim=10, n_heads=3)
    with pytest.raises(ConfigError, match="loss"):
        models.SASRec(loss="mse")
    x = Interactions.from_arrays([0, 1], [0, 1])
    with pytest.raises(DataError, match="two or more"):
        models.SASRec(epochs=1, device="cpu").fit(x, progress=False)
    y = Interactions.from_arrays([0, 0, 1], [0, 1, 1])
    m = models.SASRec(dim=8, epochs=1, device="cpu").fit(y, progress=False)
    with pytest.raises(DataError, match="out of range"):
        m.score_all([5])
    with pytest.raises(DataError, match="items"):
        m.score_all([0], history=Interactions.from_arrays([0], [4]))
    with pytest.raises(ConfigError, match="history"):
        m.score_all([0], history="x")  # type: ignore[arg-type]
