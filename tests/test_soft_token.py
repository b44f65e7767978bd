"""SoftTokenRec (S2): scores equal a torch + transformers reference built from the same weights
(GPT-2, Llama and Qwen2 backbones, with padding), frozen backbones stay bit-identical, save /
load / resume are exact, it learns on the bundled ml-latest-small, and bad input is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from torch import nn

import recforge
from recforge import Interactions, metrics, models
from recforge.errors import ConfigError, DataError




@pytest.fixture(scope="module")
def loo() -> recforge.split.SplitResult:
    return recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)


def tiny_config(kind: str, hidden: int = 16, layers: int = 2) -> dict[str, Any]:
    if kind == "gpt2":
        return {"model_type": "gpt2", "vocab_size": 50, "n_positions": 64, "n_embd": hidden, "n_layer": layers,
                "n_head": 2, "eos_token_id": 49, "bos_token_id": 49}  # fmt: skip
    return {"model_type": kind, "vocab_size": 50, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "eos_token_id": 49, "bos_token_id": 49, "tie_word_embeddings": kind == "qwen2"}  # fmt: skip


def hf_folder(kind: str, root: Path, layers: int = 2) -> Path:
    """A tiny random model written by transformers (the reference's own weights)."""
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(**tiny_config(kind, layers=layers))
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    out = root / f"{kind}-{layers}"
    model.save_pretrained(out)
    return out


def bf16_linears(model: nn.Module) -> nn.Module:
    """recforge's ``precision="bf16"`` written onto a transformers decoder: every linear layer
    (GPT-2's ``Conv1D`` too) computes in bfloat16 and returns bfloat16, except those whose output
    feeds attention's values (Llama's ``v_proj``, GPT-2's ``c_attn``), returned as float32, so
    that attention runs in float32; everything else (norms, rotary angles, the residual stream)
    is the model's own float32 code, except GPT-2's ``gelu_new``, which becomes the same function
    as one op (``nn.GELU(approximate="tanh")``, as recforge runs it) instead of the formula's
    six bfloat16 roundings. Returns the model."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
    from transformers.pytorch_utils import Conv1D

    for name, mod in model.named_modules():
        if isinstance(mod, GPT2MLP):
            mod.act = nn.GELU(approximate="tanh")
        back = name.endswith(("v_proj", "c_attn"))
        if isinstance(mod, nn.Linear):
            def linear(x: torch.Tensor, mod: nn.Linear = mod, back: bool = back) -> torch.Tensor:
                b = None if mod.bias is None else mod.bias.bfloat16()
                y = torch.nn.functional.linear(x.bfloat16(), mod.weight.bfloat16(), b)
                return y.float() if back else y

            mod.forward = linear  # type: ignore[method-assign]
        elif isinstance(mod, Conv1D):
            def conv1d(x: torch.Tensor, mod: Conv1D = mod, back: bool = back) -> torch.Tensor:
                y = torch.addmm(mod.bias.bfloat16(), x.reshape(-1, x.shape[-1]).bfloat16(), mod.weight.bfloat16())
                y = y.view(*x.shape[:-1], mod.nf)
                return y.float() if back else y

            mod.forward = conv1d  # type: ignore[method-assign]
    return model


def check_bf16(kind: str, m: Any, users: np.ndarray, got: torch.Tensor, want16: torch.Tensor, want32: torch.Tensor, saved: Path) -> None:
    """bf16 scores ``got`` equal the bfloat16 reference ``want16`` far more closely than the
    float32 one ``want32``, which they differ from by bfloat16's rounding; ``m`` saved to
    ``saved`` and loaded back keeps its precision and its scores."""
    err16 = (got - want16).abs().max().item()
    err32 = (got - want32).abs().max().item()
    print(f"{kind}: max |recforge bf16 - reference bf16| {err16:.2e}, against the float32 reference {err32:.2e}")
    assert err32 > 1e-5  # the products did run in bfloat16
    assert err16 < 0.1 * err32
    m.save(saved)
    again = type(m).load(saved, device="cpu")
    assert again.precision == "bf16"
    assert torch.allclose(again.score_all(users), got, atol=1e-6)


class Reference(nn.Module):
    """S2's model written the way its authors write it: a torch module around a transformers
    backbone fed with inputs_embeds."""

    def __init__(self, folder: Path, state: dict[str, torch.Tensor], **config: Any) -> None:
        super().__init__()
        self.backbone = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", **config)
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        missing, unexpected = self.backbone.load_state_dict(bb, strict=False)
        assert not unexpected, unexpected
        assert all("lm_head" in m or "attn.bias" in m or "masked_bias" in m for m in missing), missing
        self.backbone.eval()
        self.user_emb = state["user_emb.weight"]
        self.item_emb = state["item_emb.weight"]
        self.w = {k: v for k, v in state.items() if k.startswith("proj_")}

    def lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def scores(self, users: np.ndarray, hist: Interactions, max_len: int) -> torch.Tensor:
        rows = []
        for u in users:
            items = hist.indices[hist.indptr[u] : hist.indptr[u + 1]][-(max_len - 1) :]
            x = torch.cat([self.lin(self.user_emb[u][None], "proj_in_user"),
                           self.lin(self.item_emb[torch.from_numpy(items.astype(np.int64))], "proj_in_item")])  # fmt: skip
            rows.append(x)
        t = max(len(r) for r in rows)
        h = rows[0].shape[1]
        embeds = torch.zeros(len(rows), t, h)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            embeds[i, t - len(r) :] = r
            mask[i, t - len(r) :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        last = out.hidden_states[-1][:, -1]
        return self.lin(last, "proj_out") @ self.item_emb.T


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_scores_equal_a_transformers_reference(loo, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    seen = Interactions.concat([train, valid])
    folder = hf_folder(kind, tmp_path)
    m = models.SoftTokenRec(folder, dim=8, max_len=30, epochs=1, batch_size=64, lr=0.01, n_negatives=3, device="cpu")
    m.fit(train, progress=False)
    state = m.state_dict()
    assert {"user_emb.weight", "item_emb.weight", "proj_in_user.weight", "proj_in_item.bias", "proj_out.weight"} <= set(state)
    ref = Reference(folder, state)
    users = np.array([0, 1, 5, 17, 300, 609])
    lens = np.diff(train.indptr)[users]
    assert lens.min() < 29 < lens.max()  # some rows padded, some cut
    with torch.no_grad():
        for hist in (train, seen):
            want = ref.scores(users, hist, 30)
            got = m.score_all(users, history=hist)
            assert got.shape == (len(users), train.n_items)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    got_pred = m.predict(users, [3, 4, 5, 6, 7, 8])
    assert np.allclose(got_pred, m.score_all(users).numpy()[np.arange(6), [3, 4, 5, 6, 7, 8]], atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_bf16_precision_equals_a_bf16_transformers_reference(loo, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """precision="bf16" (trained that way for an epoch): float32 weights; scores equal the
    transformers reference with its linear layers in bfloat16 (bf16_linears) far more closely
    than the float32 reference, which they differ from by bfloat16's rounding; save / load
    keeps the precision."""
    train, _, _ = loo
    folder = hf_folder(kind, tmp_path)
    m = models.SoftTokenRec(folder, precision="bf16", dim=8, max_len=30, epochs=1, batch_size=64, lr=0.01, n_negatives=3,
                            device="cpu").fit(train, progress=False)  # fmt: skip
    assert m.precision == "bf16" and np.isfinite(m.history[-1]["loss"])
    state = m.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    users = np.array([0, 1, 5, 17, 300, 609])
    with torch.no_grad():
        got = m.score_all(users)
        ref16 = Reference(folder, state)
        bf16_linears(ref16.backbone)
        want16 = ref16.scores(users, train, 30)
        want32 = Reference(folder, state).scores(users, train, 30)
    check_bf16(kind, m, users, got, want16, want32, tmp_path / "saved")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_backbone_layers_keep_the_first_blocks(loo, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """backbone_layers=2 of a 3-block model scores as transformers' model built from the same
    folder with 2 blocks; the kept blocks are the file's first two, unchanged when frozen; the
    truncation survives save / load; a count outside 1..3 is a ConfigError naming the limit."""
    train, _, _ = loo
    folder = hf_folder(kind, tmp_path, layers=3)
    kw: dict[str, Any] = dict(dim=8, max_len=30, epochs=1, batch_size=64, lr=0.01, n_negatives=3, device="cpu")
    m = models.SoftTokenRec(folder, backbone_mode="frozen", backbone_layers=2, **kw).fit(train, progress=False)
    assert m.backbone_layers == 2
    state = m.state_dict()
    block = "h" if kind == "gpt2" else "layers"
    assert any(f".{block}.1." in k for k in state) and not any(f".{block}.2." in k for k in state)
    original = {f"backbone.{k}": v for k, v in transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    kept = [k for k in state if k.startswith("backbone.") and k in original]
    assert len(kept) >= 10 and all(torch.equal(state[k], original[k]) for k in kept)
    ref = Reference(folder, state, **{"n_layer" if kind == "gpt2" else "num_hidden_layers": 2})
    users = np.array([0, 1, 5, 17, 300, 609])
    with torch.no_grad():
        want = ref.scores(users, train, 30)
        got = m.score_all(users)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
        third = {k: v for k, v in original.items() if f".{block}.2." in k}
        full = Reference(folder, {**third, **state})  # all three blocks: a different model
        assert not torch.allclose(full.scores(users, train, 30), want, atol=1e-3)
    m.save(tmp_path / "saved")
    again = models.SoftTokenRec.load(tmp_path / "saved", device="cpu")
    assert torch.allclose(again.score_all(users), got, atol=1e-6)
    with pytest.raises(ConfigError, match=r"has 3 transformer blocks.*1\.\.=3, got 4"):
        models.SoftTokenRec(folder, backbone_layers=4, **kw).fit(train, progress=False)
    with pytest.raises(ConfigError, match="backbone_layers must be >= 1"):
        models.SoftTokenRec(folder, backbone_layers=0, **kw).fit(train, progress=False)


def test_frozen_backbone_is_bit_identical_and_full_moves(loo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, _, _ = loo
    folder = hf_folder("llama", tmp_path)
    original = {f"backbone.{k}": v for k, v in transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    for mode, moves in (("frozen", False), ("full", True), ("random", True)):
        m = models.SoftTokenRec(folder, backbone_mode=mode, dim=8, max_len=10, epochs=1, batch_size=128, lr=0.01, device="cpu")
        m.fit(train, progress=False)
        state = m.state_dict()
        names = [k for k in state if k.startswith("backbone.") and k in original]
        assert len(names) >= 10
        same = all(torch.equal(state[k], original[k]) for k in names)
        assert same == (not moves), mode


def test_backbone_learning_rate_group_and_causal_lm_source(tmp_path: Path) -> None:
    folder = hf_folder("gpt2", tmp_path)
    lm = recforge.text.CausalLM.from_pretrained(folder, device="cpu")
    m = models.SoftTokenRec(lm, backbone_lr=1e-5, backbone_weight_decay=0.0)
    assert m.backbone_lr == 1e-5 and m.lr == 5e-4
    assert m.config()["backbone"] == str(folder.resolve())
    assert m.config()["param_groups"] == [{"prefix": "backbone.", "lr": 1e-5, "weight_decay": 0.0}]
    cfg_model = models.SoftTokenRec(recforge.text.CausalLM.from_config(tiny_config("llama"), device="cpu"))
    assert cfg_model.config()["backbone"]["model_type"] == "llama"


def test_save_load_and_exact_resume(loo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train, valid, _ = loo
    kw: dict[str, Any] = dict(backbone=tiny_config("gpt2"), dim=8, max_len=10, epochs=3, batch_size=128, lr=0.01, device="cpu")
    straight = models.SoftTokenRec(**kw).fit(train, valid, progress=False)
    again = models.SoftTokenRec(**kw).fit(train, valid, progress=False)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in again.history]
    models.SoftTokenRec(**kw).fit(train, valid, epochs=1, checkpoint_dir=tmp_path / "ck", progress=False)
    resumed = models.SoftTokenRec(**kw).fit(train, valid, checkpoint_dir=tmp_path / "ck", resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    straight.save(tmp_path / "saved")
    loaded = models.SoftTokenRec.load(tmp_path / "saved", device="cpu")
    users = np.arange(20)
    assert torch.allclose(loaded.score_all(users), straight.score_all(users), atol=1e-6)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_soft_tokens_beat_popularity_on_leave_one_out(loo) -> None:  # type: ignore[no-untyped-def]
    """A small random Llama backbone, full ranking on the bundled ml-latest-small (one seed here;
    the README's table averages three)."""
    train, valid, test = loo
    seen = Interactions.concat([train, valid])
    pop = metrics.full_ranking(models.Popularity().fit(seen).score_all, test, [seen], ks=(10,), metrics=("ndcg", "hit"))
    m = models.SoftTokenRec(tiny_config("llama", hidden=64), backbone_mode="random", dim=64, max_len=30, epochs=10,
                            batch_size=32, lr=0.002, dropout=0.2, n_negatives=8, seed=0, device="cpu")  # fmt: skip
    m.fit(train, valid, progress=False)
    r = metrics.full_ranking(lambda u: m.score_all(u, history=seen), test, [seen], ks=(10,), metrics=("ndcg", "hit"))
    print(f"NDCG@10: SoftTokenRec {r['ndcg@10']:.4f}, popularity {pop['ndcg@10']:.4f}; HR@10 {r['hit@10']:.4f} vs {pop['hit@10']:.4f}")
    assert m.history[-1]["loss"] < m.history[0]["loss"]
    assert r["ndcg@10"] > 1.1 * pop["ndcg@10"]
    assert r["hit@10"] > pop["hit@10"]


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        models.SoftTokenRec(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="backbone"):
        models.SoftTokenRec(3)
    with pytest.raises(ConfigError, match="backbone_mode"):
        models.SoftTokenRec(tiny_config("gpt2"), backbone_mode="half")
    with pytest.raises(ConfigError, match="precision"):
        models.SoftTokenRec(tiny_config("gpt2"), precision="fp16")
    with pytest.raises(ConfigError, match="max_len"):
        models.SoftTokenRec(tiny_config("gpt2"), max_len=1)
    with pytest.raises(ConfigError, match="n_negatives"):
        models.SoftTokenRec(tiny_config("gpt2"), n_negatives=0)
    with pytest.raises(ConfigError, match="switched off"):
        models.SoftTokenRec(tiny_config("gpt2"), ce_weight=0, bpr_weight=0, user_bpr_weight=0)
    x = Interactions.from_arrays([0, 1], [0, 1])
    with pytest.raises(DataError, match="two or more"):
        models.SoftTokenRec(tiny_config("gpt2"), epochs=1, device="cpu").fit(x, progress=False)
    y = Interactions.from_arrays([0, 0, 1], [0, 1, 1])
    m = models.SoftTokenRec(tiny_config("gpt2"), dim=4, epochs=1, device="cpu").fit(y, progress=False)
    with pytest.raises(DataError, match="out of range"):
        m.score_all([5])
