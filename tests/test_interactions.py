"""recforge.Interactions and recforge.IdMap: construction, validation, round trips."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recforge
from recforge import IdMap, Interactions
from recforge.errors import DataError


def small() -> Interactions:
    return Interactions.from_arrays(
        users=np.array([1, 0, 1, 0, 1, 2]),
        items=np.array([5, 3, 4, 2, 1, 0]),
        ratings=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.5]),
        timestamps=np.array([30, 10, 20, 10, 20, 5]),
        n_items=6,
    )


def test_counts_and_csr_order() -> None:
    x = small()
    assert (x.n_users, x.n_items, x.n_interactions, len(x)) == (3, 6, 6, 6)
    assert x.indptr.tolist() == [0, 2, 5, 6]
    # user 0: rows 1 and 3 share timestamp 10 -> row order; user 1: ts 20 (rows 2, 4) then 30.
    assert x.user_items(0).tolist() == [3, 2]
    assert x.user_items(1).tolist() == [4, 1, 5]
    a = x.to_arrays()
    assert a["rows"].tolist() == [1, 3, 2, 4, 0, 5]
    assert a["users"].tolist() == [0, 0, 1, 1, 1, 2]
    assert a["ratings"].dtype == np.float32
    assert a["ratings"].tolist() == [2.0, 4.0, 3.0, 5.0, 1.0, 0.5]
    assert x.user_degrees().tolist() == [2, 3, 1]
    assert x.item_degrees().tolist() == [1] * 6
    assert "n_users=3" in repr(x)


def test_accepts_lists_int32_and_datetime64() -> None:
    ts = np.array(["2020-01-01T00:00:10", "2020-01-01T00:00:05"], dtype="datetime64[ms]")
    x = Interactions.from_arrays([0, 0], np.array([1, 0], dtype=np.int32), timestamps=ts)
    assert x.user_items(0).tolist() == [0, 1]
    assert x.to_arrays()["timestamps"].tolist() == [1577836805, 1577836810]
    assert x.has_timestamps and not x.has_ratings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(users=[0, 1], items=[0]), "users has 2 entries but items has 1"),
        (dict(users=[0, -1], items=[0, 1]), r"users\[1\] = -1"),
        (dict(users=[0.0, 1.5], items=[0, 1]), "users must hold integers, got an array of dtype float64"),
        (dict(users=[True], items=[0]), "must hold integers"),
        (dict(users=[0, 4], items=[0, 1], n_users=3), "n_users = 3 but users contains id 4"),
        (dict(users=[0], items=[0], ratings=[np.nan]), r"ratings\[0\] = NaN is not a finite"),
        (dict(users=[0], items=[0], ratings=["a"]), "ratings must hold numbers"),
        (dict(users=[0], items=[0], timestamps=[1, 2]), "timestamps has 2"),
        (dict(users=[[0]], items=[[0]]), "1-D array"),
        (dict(users=["a"], items=[0]), "must hold integers"),
        (dict(users=[0], items=[0], timestamps=np.array(["NaT"], dtype="datetime64[s]")), "NaT"),
    ],
)
def test_bad_input_is_a_data_error(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Interactions.from_arrays(**kwargs)


def test_user_items_out_of_range() -> None:
    with pytest.raises(DataError, match="user 3 is out of range"):
        small().user_items(3)
    with pytest.raises(DataError):
        small().user_items(-1)


def test_pickle_select_concat_round_trip() -> None:
    x = small()
    assert pickle.loads(pickle.dumps(x)) == x
    mask = np.array([True, False, True, False, True, False])
    a, b = x.select(mask), x.select(~mask)
    assert a.n_interactions == 3 and b.n_interactions == 3
    assert Interactions.concat([a, b]) == x
    with pytest.raises(DataError, match="keep has 2 flags"):
        x.select(np.array([True, False]))
    with pytest.raises(DataError, match="boolean mask"):
        x.select(np.zeros(6))
    other = Interactions.from_arrays([0], [0], n_users=3, n_items=7)
    with pytest.raises(DataError, match="one id space"):
        Interactions.concat([x, other])


def test_empty_interactions() -> None:
    x = Interactions.from_arrays(np.zeros(0, np.int64), [], n_users=2, n_items=3)
    assert (x.n_users, x.n_items, x.n_interactions) == (2, 3, 0)
    assert x.indptr.tolist() == [0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 11), st.integers(0, 5)), min_size=0, max_size=80
    )
)
def test_csr_matches_a_stable_sort_by_user_time_row(rows: list[tuple[int, int, int]]) -> None:
    """Property: entries are exactly the input sorted by (user, timestamp, row)."""
    users = np.array([r[0] for r in rows], dtype=np.int64)
    items = np.array([r[1] for r in rows], dtype=np.int64)
    ts = np.array([r[2] for r in rows], dtype=np.int64)
    x = Interactions.from_arrays(users, items, timestamps=ts, n_users=8, n_items=12)
    order = sorted(range(len(rows)), key=lambda i: (users[i], ts[i], i))
    a = x.to_arrays()
    assert a["rows"].tolist() == order
    assert a["users"].tolist() == users[order].tolist()
    assert a["items"].tolist() == items[order].tolist()
    assert np.bincount(users, minlength=8).tolist() == x.user_degrees().tolist()


def test_id_map_ints_and_strings() -> None:
    m, dense = IdMap.fit(np.array([50, 10, 50, 30]))
    assert dense.tolist() == [0, 1, 0, 2]
    assert m.raw().tolist() == [50, 10, 30]
    assert m.encode([30, 50]).tolist() == [2, 0]
    assert m.decode([1]).tolist() == [10]
    assert len(m) == 3 and not m.is_str
    with pytest.raises(DataError, match="unknown id 99 at position 1"):
        m.encode([10, 99])
    with pytest.raises(DataError, match="out of range"):
        m.decode([3])
    s, d = IdMap.fit(np.array(["b", "a", "b"], dtype=object))
    assert s.is_str and d.tolist() == [0, 1, 0]
    assert s.decode([1, 0]) == ["a", "b"]
    assert s.subset([1]).raw() == ["a"]
    assert pickle.loads(pickle.dumps(s)).raw() == ["b", "a"]
    with pytest.raises(DataError, match="appears twice"):
        IdMap.from_unique(["x", "y", "x"])
    with pytest.raises(DataError, match="not a string"):
        IdMap.fit(np.array(["a", 3], dtype=object))
    with pytest.raises(DataError, match="other kind"):
        m.encode(["a"])


def test_top_level_reexports() -> None:
    assert recforge.Interactions is Interactions
    assert recforge.IdMap is IdMap
