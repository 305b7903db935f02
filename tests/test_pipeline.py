"""Pipeline tests on a toy store whose item id names its event, so every token can be traced to its user."""
import itertools

import numpy as np
import pytest

from data_pipeline import pipeline, splits
from data_pipeline.datasets.events import from_user_lists
from data_pipeline.store import SequenceStore, write_store

MAX_LEN = 6
L = MAX_LEN + 1
INT32_KEYS = {"item_ids_BxL", "timestamps_BxL", "target_ids_BxL", "target_timestamps_BxL", "segment_ids_BxL",
              "positions_BxL"}


def _make_store(path, lengths, protocol="loo-val", time_offset=1_000_000, source_files=None):
    """Event e (global, 0-based) has item id e+1 and time time_offset + 10*e: ids name events uniquely."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = [np.arange(offsets[u], offsets[u + 1]) + 1 for u in range(len(lengths))]
    times = [time_offset + 10 * (it - 1) for it in items]
    seqs = from_user_lists("toy", list(range(len(lengths))), items, times, None, num_items=int(offsets[-1]),
                           item_raw_ids=None, source_files=source_files or {})
    write_store(seqs, path, protocol=protocol)
    return SequenceStore.open(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    lengths = np.random.default_rng(3).integers(1, 16, size=37)
    lengths[:4] = [1, 2, 3, 4]  # too short for some parts
    return _make_store(tmp_path_factory.mktemp("toy") / "s", lengths)


@pytest.fixture(scope="module")
def ref_store(store, tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("ref") / "s", store.lengths, protocol="reference")


def _train(store, **kw):
    args = dict(max_len=MAX_LEN, batch_size=4, seed=7, process_index=0, process_count=1)
    args.update(kw)
    return pipeline.make_train_dataset(store, **args)


def _take(it, n):
    return list(itertools.islice(it, n))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _event_user(store):
    return np.repeat(np.arange(store.num_users), store.lengths)


def _check_train_batches(store, batches, *, pack):
    """Checks every row's layout and returns {user: [item ids seen, in order]} over all rows."""
    owner = _event_user(store)
    seen = {}
    for batch in batches:
        assert set(batch) == INT32_KEYS | {"lengths_B"}
        for k, v in batch.items():
            assert v.dtype == np.int32 and v.shape == ((4, L) if k in INT32_KEYS else (4,)), k
        for b in range(4):
            n = batch["lengths_B"][b]
            for k in INT32_KEYS:  # right-padded with zeros
                assert not batch[k][b, n:].any(), k
            seg = batch["segment_ids_BxL"][b, :n]
            assert (np.diff(seg) >= 0).all() and (n == 0 or seg[0] == 1)
            assert set(np.diff(seg)) <= {0, 1}
            if not pack:
                assert (seg == 1).all()
            for s in np.unique(seg):
                idx = np.flatnonzero(seg == s)
                items = batch["item_ids_BxL"][b, idx]
                users = owner[items - 1]
                assert (users == users[0]).all(), "a segment mixes users"
                u = int(users[0])
                assert u not in seen, f"user {u} appears twice in an epoch"
                assert (np.diff(items) == 1).all(), "events of a segment are consecutive and in order"
                np.testing.assert_array_equal(batch["positions_BxL"][b, idx], np.arange(len(idx)))
                np.testing.assert_array_equal(batch["timestamps_BxL"][b, idx], 1_000_000 + 10 * (items - 1))
                np.testing.assert_array_equal(batch["target_ids_BxL"][b, idx], np.append(items[1:], 0))
                tts = batch["timestamps_BxL"][b, idx]
                np.testing.assert_array_equal(batch["target_timestamps_BxL"][b, idx], np.append(tts[1:], tts[-1]))
                seen[u] = items.tolist()
    return seen


def _expected_train(store, protocol=None):
    t = splits.train_lengths(store.lengths, protocol or store.protocol)
    out = {}
    for u in np.flatnonzero(t >= 0):
        items = store.user(u)[0][:t[u]]
        out[int(u)] = items[-L:].tolist()
    return out


@pytest.mark.parametrize("pack", [False, True])
def test_one_epoch_has_every_train_event_once(store, pack):
    batches = list(_train(store, pack=pack, num_epochs=1))
    assert _check_train_batches(store, batches, pack=pack) == _expected_train(store)
    size = pipeline.train_epoch_size(store, max_len=MAX_LEN, batch_size=4, pack=pack, seed=7, process_count=1)
    assert size["batches"] == len(batches)
    assert size["rows"] == sum(int((b["lengths_B"] > 0).sum()) for b in batches)
    assert size["tokens"] == sum(int(b["lengths_B"].sum()) for b in batches)
    assert size["users"] == len(_expected_train(store))


def test_packing_uses_fewer_rows(store):
    sizes = [pipeline.train_epoch_size(store, max_len=MAX_LEN, batch_size=4, pack=p, process_count=1)
             for p in (False, True)]
    assert sizes[1]["rows"] < sizes[0]["rows"] and sizes[1]["tokens"] == sizes[0]["tokens"]
    assert sizes[1]["rows"] * L >= sizes[1]["tokens"]


def test_reference_protocol_trains_on_more_events(ref_store):
    batches = list(_train(ref_store, num_epochs=1))
    assert _check_train_batches(ref_store, batches, pack=False) == _expected_train(ref_store)
    # The protocol can also be overridden at read time.
    assert _check_train_batches(ref_store, list(_train(ref_store, num_epochs=1, protocol="loo-val")),
                                pack=False) == _expected_train(ref_store, "loo-val")


@pytest.mark.parametrize("pack", [False, True])
def test_two_processes_are_disjoint_and_cover_all(store, pack):
    per_proc = [list(_train(store, pack=pack, num_epochs=1, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(per_proc[0]) == len(per_proc[1])  # same number of steps on every process
    seen = [_check_train_batches(store, b, pack=pack) for b in per_proc]
    assert not set(seen[0]) & set(seen[1])
    assert {**seen[0], **seen[1]} == _expected_train(store)
    size = pipeline.train_epoch_size(store, max_len=MAX_LEN, batch_size=4, pack=pack, seed=7, process_count=2)
    assert size["batches"] == len(per_proc[0])


def _all_window_segments(store, batches):
    """{user: [segment item lists]} over all rows, checking each segment's targets against the user's train part."""
    owner = _event_user(store)
    train = splits.train_lengths(store.lengths, store.protocol)
    segments = {}
    for batch in batches:
        for b in range(batch["lengths_B"].shape[0]):
            n = batch["lengths_B"][b]
            assert not batch["item_ids_BxL"][b, n:].any()
            seg = batch["segment_ids_BxL"][b, :n]
            for s in np.unique(seg):
                idx = np.flatnonzero(seg == s)
                items = batch["item_ids_BxL"][b, idx]
                u = int(owner[items[0] - 1])
                assert (owner[items - 1] == u).all() and (np.diff(items) == 1).all()
                assert len(idx) <= L
                np.testing.assert_array_equal(batch["positions_BxL"][b, idx], np.arange(len(idx)))
                user_items = store.user(u)[0][:train[u]]
                k = int(np.flatnonzero(user_items == items[-1])[0])  # index of the segment's last event
                nxt = user_items[k + 1] if k + 1 < train[u] else 0  # the next train event, if any, is its target
                np.testing.assert_array_equal(batch["target_ids_BxL"][b, idx], np.append(items[1:], nxt))
                nxt_time = 1_000_000 + 10 * ((nxt or items[-1]) - 1)
                np.testing.assert_array_equal(batch["target_timestamps_BxL"][b, idx],
                                              np.append(1_000_000 + 10 * (items[1:] - 1), nxt_time))
                segments.setdefault(u, []).append(items.tolist())
    return segments


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("protocol", ["loo-val", "reference"])
def test_all_windows_train_every_event_once_in_chunks_from_the_most_recent(store, ref_store, pack, protocol):
    s = store if protocol == "loo-val" else ref_store
    train = splits.train_lengths(s.lengths, protocol)
    per_proc = [list(_train(s, pack=pack, num_epochs=1, windows="all", process_index=p, process_count=2))
                for p in (0, 1)]
    assert len(per_proc[0]) == len(per_proc[1])
    segs = {}
    for b in per_proc:  # a user's chunks may land on different processes; each event on exactly one
        for u, chunks in _all_window_segments(s, b).items():
            segs.setdefault(u, []).extend(chunks)
    assert set(segs) == set(np.flatnonzero(train >= 0).tolist())
    assert any(len(v) > 1 for v in segs.values()), "the fixture must have users longer than a row"
    for u, chunks in segs.items():
        chunks = sorted(chunks)
        assert sum(chunks, []) == store.user(u)[0][:train[u]].tolist(), f"user {u}: every train event once"
        assert all(len(c) == L for c in chunks[1:]), "only the oldest chunk is short"
    size = pipeline.train_epoch_size(s, max_len=MAX_LEN, batch_size=4, pack=pack, seed=7, process_count=2,
                                     windows="all")
    assert size["batches"] == len(per_proc[0])
    assert size["tokens"] == int(train[train >= 0].sum())
    assert size["pieces"] == sum(len(v) for v in segs.values())
    last = pipeline.train_epoch_size(s, max_len=MAX_LEN, batch_size=4, pack=pack, seed=7, process_count=2)
    assert last["pieces"] == last["users"] == size["users"] and last["tokens"] < size["tokens"]


def test_train_windows_are_checked_and_part_of_the_state(store):
    with pytest.raises(ValueError, match="windows must be one of"):
        _train(store, windows="recent")
    with pytest.raises(ValueError, match="windows must be one of"):
        pipeline.train_epoch_size(store, max_len=MAX_LEN, batch_size=4, process_count=1, windows="")
    it = iter(_train(store, windows="all"))
    next(it)
    with pytest.raises(ValueError, match="different pipeline.*windows"):
        iter(_train(store)).set_state(it.get_state())
    # A state saved before windows existed came from a "last" pipeline.
    last = iter(_train(store))
    next(last)
    old = {k: v for k, v in last.get_state().items() if k != "windows"}
    it2 = iter(_train(store))
    it2.set_state(old)
    _same([next(it2)], [next(last)])
    with pytest.raises(ValueError, match="different pipeline.*windows"):
        iter(_train(store, windows="all")).set_state(old)


@pytest.mark.parametrize("pack", [False, True])
def test_deterministic_and_reshuffled_per_epoch(store, pack):
    n = pipeline.train_epoch_size(store, max_len=MAX_LEN, batch_size=4, pack=pack, process_count=1)["batches"]
    a = _take(iter(_train(store, pack=pack)), 2 * n + 1)  # repeats forever: run into a third epoch
    _same(a, _take(iter(_train(store, pack=pack, prefetch=0)), 2 * n + 1))
    first_items = lambda bs: [b["item_ids_BxL"][:, 0].tolist() for b in bs]  # noqa: E731
    assert first_items(a[:n]) != first_items(a[n:2 * n]), "epoch 1 must be shuffled differently"
    other_seed = _take(iter(_train(store, pack=pack, seed=8)), n)
    assert first_items(a[:n]) != first_items(other_seed)
    assert _check_train_batches(store, a[n:2 * n], pack=pack) == _expected_train(store)


@pytest.mark.parametrize("pack,windows", [(False, "last"), (True, "last"), (True, "all")])
def test_state_restore_continues_identically(store, pack, windows):
    ds = _train(store, pack=pack, num_epochs=3, windows=windows)
    full = list(iter(ds))
    n = len(full) // 3
    for k in (0, 3, n - 1, n, n + 2):
        it = iter(ds)
        _take(it, k)
        state = it.get_state()
        it2 = iter(ds)
        it2.set_state(state)
        _same(list(it2), full[k:])
        assert next(it, None) is not None or k == len(full)


def test_restore_into_other_pipeline_refused(store):
    it = iter(_train(store))
    next(it)
    with pytest.raises(ValueError, match="seed"):
        iter(_train(store, seed=1)).set_state(it.get_state())


def test_restore_onto_store_of_other_data_refused(store, tmp_path, caplog):
    it = iter(_train(store))
    next(it)
    state = it.get_state()
    # Same users, lengths and counts, but built from another raw file: a resume there would read other data.
    other = _make_store(tmp_path / "other", store.lengths, source_files={"ml-1m/ratings.dat": "cd" * 32})
    with pytest.raises(ValueError, match="different pipeline.*store.*sources_sha256"):
        iter(_train(other)).set_state(state)
    fewer = _make_store(tmp_path / "fewer", store.lengths[:-1])
    with pytest.raises(ValueError, match="events"):
        iter(_train(fewer)).set_state(state)
    # A state saved before stores were fingerprinted is still accepted, with a warning.
    old = {k: v for k, v in state.items() if k != "store"}
    it2 = iter(_train(store))
    with caplog.at_level("WARNING"):
        it2.set_state(old)
    assert "no store identity" in caplog.text
    _same([next(it2)], [next(it)])


def test_default_processes_come_from_jax(store):
    _same(_take(iter(_train(store, process_index=None, process_count=None)), 2), _take(iter(_train(store)), 2))
    with pytest.raises(ValueError, match="both process_index and process_count"):
        _train(store, process_index=0, process_count=None)
    with pytest.raises(ValueError, match="process_index 2 not in"):
        _train(store, process_index=2, process_count=2)


def test_timestamps_outside_int32_name_the_user(tmp_path):
    st = _make_store(tmp_path / "s", [3, 5], time_offset=2**31)
    with pytest.raises(ValueError, match=r"user row \d \(source id \d\).*outside int32"):
        next(iter(_train(st, prefetch=0)))


def _check_eval(store, split, protocol, batches_per_process):
    hist = splits.history_lengths(store.lengths, protocol, split)
    want = pipeline.eval_users(store, split, protocol=protocol)
    np.testing.assert_array_equal(want, np.flatnonzero(hist >= 0))
    assert len({len(b) for b in batches_per_process}) == 1  # same number of batches on every process
    got = []
    for batches in batches_per_process:
        for batch in batches:
            assert set(batch) == INT32_KEYS | {"lengths_B", "weights_B", "user_index_B"}
            assert batch["weights_B"].dtype == np.float32 and batch["user_index_B"].dtype == np.int32
            for b in range(len(batch["lengths_B"])):
                u, n = int(batch["user_index_B"][b]), int(batch["lengths_B"][b])
                if u < 0:
                    assert batch["weights_B"][b] == 0 and n == 0
                    assert not any(batch[k][b].any() for k in INT32_KEYS)
                    continue
                assert batch["weights_B"][b] == 1
                got.append(u)
                items, times = store.user(u)
                h = int(hist[u])
                assert n == min(h, MAX_LEN)
                np.testing.assert_array_equal(batch["item_ids_BxL"][b, :n], items[h - n:h])
                np.testing.assert_array_equal(batch["timestamps_BxL"][b, :n], times[h - n:h])
                target = np.zeros(L, np.int32)
                target[n - 1] = items[h]
                np.testing.assert_array_equal(batch["target_ids_BxL"][b], target)
                # every history slot queries the time bias at its next event's time, the last at the target's
                tts = np.zeros(L, np.int64)
                tts[:n] = times[h - n + 1:h + 1]
                np.testing.assert_array_equal(batch["target_timestamps_BxL"][b], tts)
                np.testing.assert_array_equal(batch["segment_ids_BxL"][b], np.arange(L) < n)
                np.testing.assert_array_equal(batch["positions_BxL"][b], np.where(np.arange(L) < n, np.arange(L), 0))
                assert not batch["item_ids_BxL"][b, n:].any()
    assert sorted(got) == want.tolist() and len(got) == len(set(got))


@pytest.mark.parametrize("split,which", [("valid", "loo"), ("test", "loo"), ("test", "ref")])
@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_each_user_once(store, ref_store, split, which, process_count):
    st = store if which == "loo" else ref_store
    per_proc = [list(pipeline.make_eval_dataset(st, split=split, max_len=MAX_LEN, batch_size=4,
                                                process_index=p, process_count=process_count))
                for p in range(process_count)]
    _check_eval(st, split, st.protocol, per_proc)


def test_eval_is_deterministic_and_random_access(store):
    ds = pipeline.make_eval_dataset(store, split="test", max_len=MAX_LEN, batch_size=5, process_index=0,
                                    process_count=1)
    assert len(ds) == -(-len(pipeline.eval_users(store, "test")) // 5)
    _same(list(ds), [ds[j] for j in range(len(ds))])


def test_eval_reference_valid_is_an_error(ref_store):
    with pytest.raises(ValueError, match="no 'valid' split"):
        pipeline.make_eval_dataset(ref_store, split="valid", max_len=MAX_LEN, batch_size=4, process_index=0,
                                   process_count=1)


@pytest.mark.parametrize("protocol", ["loo-val", "reference"])
def test_eval_max_users_is_the_first_eligible_users_and_train_counts_match_a_per_user_count(
        store, ref_store, protocol):
    from lrm.training.evaluate import train_item_counts

    st = store if protocol == "loo-val" else ref_store
    eligible = pipeline.eval_users(st, "test")
    full = [b["user_index_B"] for b in pipeline.make_eval_dataset(st, split="test", max_len=MAX_LEN, batch_size=4)]
    sub = [b["user_index_B"] for b in pipeline.make_eval_dataset(st, split="test", max_len=MAX_LEN, batch_size=4,
                                                                 max_users=5)]
    full_u, sub_u = np.concatenate(full), np.concatenate(sub)
    np.testing.assert_array_equal(full_u[full_u >= 0], eligible)
    np.testing.assert_array_equal(sub_u[sub_u >= 0], eligible[:5])
    assert len(sub) == 2  # 5 users in batches of 4
    with pytest.raises(ValueError, match="max_users"):
        pipeline.make_eval_dataset(st, split="test", max_len=MAX_LEN, batch_size=4, max_users=-1)
    expected = np.zeros(st.num_items + 1, np.int64)
    for u, t in enumerate(splits.train_lengths(st.lengths, st.protocol)):
        if t > 0:
            np.add.at(expected, st.user(u)[0][:t], 1)
    np.testing.assert_array_equal(train_item_counts(st), expected)
    assert expected.sum() > 0


def test_a_history_reads_the_same_in_train_and_eval_rows(tmp_path):
    """A history slot's output depends on the events up to it and on the time it queries the time bias at
    (its next event's, `ts[i+1]`): an eval row must give the outputs the train row of the same events gives,
    or a model is scored on inputs it was not trained on."""
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from lrm.models import build_model

    rng = np.random.default_rng(0)
    lengths = [5, 7, 8]  # loo-val train parts of 3, 5, 6 events: one train row each, the eval rows' histories
    gaps = [0, 0, 5, 3600, 86_400 * 40]  # same-second bursts, minutes, months: different time buckets
    items, times, next_id = [], [], 1
    for n in lengths:
        items.append(np.arange(next_id, next_id + n))
        next_id += n
        times.append(1_000_000 + np.cumsum(rng.choice(gaps, size=n)))
    seqs = from_user_lists("toy", list(range(len(lengths))), items, times, None, num_items=next_id - 1,
                           item_raw_ids=None, source_files={})
    write_store(seqs, tmp_path / "s", protocol="loo-val")
    store = SequenceStore.open(tmp_path / "s")
    train = next(iter(_train(store, batch_size=3, num_epochs=1)))
    evals = pipeline.make_eval_dataset(store, split="valid", max_len=MAX_LEN, batch_size=3, process_index=0,
                                       process_count=1)[0]
    cfg = ml_collections.ConfigDict(dict(name="hstu", embed_dim=8, num_blocks=2, num_heads=2, head_dim=3,
                                         max_seq_len=L, dropout=0.0, attention_impl="xla"))
    model = build_model(cfg, num_items=next_id - 1, rngs=nnx.Rngs(params=0))

    def outputs(batch):
        return np.asarray(model({k: jnp.asarray(v) for k, v in batch.items() if k in INT32_KEYS | {"lengths_B"}},
                                deterministic=True))

    out_train, out_eval = outputs(train), outputs(evals)
    own_time = dict(evals, target_timestamps_BxL=evals["timestamps_BxL"])  # each slot at its own time
    out_own = outputs(own_time)
    for b in range(3):
        n = int(evals["lengths_B"][b])
        r = next(r for r in range(3) if np.array_equal(train["item_ids_BxL"][r, :n], evals["item_ids_BxL"][b, :n]))
        np.testing.assert_array_equal(evals["target_timestamps_BxL"][b, :n - 1], train["target_timestamps_BxL"][r, :n - 1])
        np.testing.assert_allclose(out_eval[b, :n - 1], out_train[r, :n - 1], rtol=1e-5, atol=1e-6)
        # not vacuous: querying at the slots' own times gives other outputs
        assert not np.allclose(out_own[b, :n - 1], out_train[r, :n - 1], rtol=1e-3, atol=1e-4)
