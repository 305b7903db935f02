"""Training FLOPs from the rows the pipeline really builds, and the log-interval FLOP/s / MFU meter."""
from __future__ import annotations

import numpy as np
import pytest

from configs import base
from data_pipeline import pipeline
from data_pipeline.datasets.events import from_user_lists
from data_pipeline.store import SequenceStore, write_store
from lrm import flops
from lrm.training.mfu import MfuMeter


def _store(path, lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = [np.arange(offsets[u], offsets[u + 1]) % 20 + 1 for u in range(len(lengths))]
    times = [np.arange(n) * 10 for n in lengths]
    seqs = from_user_lists("toy", list(range(len(lengths))), items, times, None, num_items=20, item_raw_ids=None,
                           source_files={})
    write_store(seqs, path, protocol="loo-val")
    return SequenceStore.open(path)


@pytest.mark.parametrize("pack", [False, True])
def test_train_n_eff_is_the_causal_key_count_of_one_epoch_of_real_batches(tmp_path, pack):
    lengths = np.random.default_rng(0).integers(1, 25, size=41)  # some too short to train, some longer than a row
    store = _store(tmp_path / "s", lengths)
    max_len = 8
    epoch = pipeline.train_epoch_size(store, max_len=max_len, batch_size=4, pack=pack)["batches"]
    ds = pipeline.make_train_dataset(store, max_len=max_len, batch_size=4, seed=1, pack=pack, num_epochs=1,
                                     process_index=0, process_count=1)
    keys = tokens = 0
    batches = list(ds)
    assert len(batches) == epoch
    for b in batches:
        seg = b["segment_ids_BxL"]
        for row in seg:  # each segment (user) attends causally over itself: n(n+1)/2 query-key pairs
            n = np.bincount(row[row > 0])[1:]
            keys += int(np.sum(n * (n + 1) // 2))
        tokens += int(b["lengths_B"].sum())
    assert flops.train_n_eff(store.lengths, store.protocol, max_len) == pytest.approx(keys / tokens, rel=1e-12)
    if pack:
        assert (batches[0]["segment_ids_BxL"].max(axis=1) > 1).any()  # packing really put users together


def test_train_n_eff_rejects_bad_input():
    with pytest.raises(ValueError, match="no user has a train part"):
        flops.train_n_eff(np.array([1, 2]), "loo-val", 8)  # loo-val keeps n-2 events: both users too short
    with pytest.raises(ValueError, match="max_len"):
        flops.train_n_eff(np.array([9]), "loo-val", 0)


def test_matmul_dtype_follows_the_precision_jax_runs():
    assert flops.matmul_dtype("bfloat16", "NVIDIA H100 80GB HBM3") == "bfloat16"
    assert flops.matmul_dtype("float32", "NVIDIA H100 80GB HBM3") == "tensorfloat32"  # JAX default: TF32
    assert flops.matmul_dtype("float32", "TPU v4", "default") == "bfloat16"
    assert flops.matmul_dtype("float32", "NVIDIA H200", "highest") == "float32"
    assert flops.matmul_dtype("float32", "NVIDIA H200", "bfloat16_3x") is None  # no peak column: no MFU
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "tensorfloat32") == 495e12
    assert flops.peak_flops("NVIDIA H100", None) is None
    with pytest.raises(ValueError, match="compute dtype"):
        flops.matmul_dtype("float16", "cpu")


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _meter(device_kind, clock, **kw):
    c = base.get_config()
    c.model.name, c.model.embed_dim, c.model.num_blocks, c.model.num_heads, c.model.head_dim = "hstu", 64, 2, 2, 32
    c.loss.kind, c.loss.num_negatives = "sampled_softmax", 31
    return MfuMeter(c.model, c.loss, 1000, n_eff=6.0, device_kind=device_kind, num_devices=2, clock=clock, **kw)


def test_meter_rates_exclude_evaluation_and_pool_intervals_after_the_first():
    clock = _Clock()
    m = _meter("NVIDIA H100 80GB HBM3", clock, compute_dtype="bfloat16", start_tokens=1000)
    per_token = m.flops(1)
    assert m.flops(1000) == pytest.approx(1000 * per_token, rel=1e-12)
    clock.t += 10.0  # first interval: compilation included
    first = m.log(3000)
    assert first["flops_seen"] == m.flops(3000)
    assert first["model_flops_per_s"] == pytest.approx(2000 * per_token / 10.0)
    assert first["mfu"] == pytest.approx(2000 * per_token / 10.0 / (2 * 989e12))
    clock.t += 1.0
    with m.excluded():
        clock.t += 5.0  # evaluation: not training time
    clock.t += 1.0
    second = m.log(7000)
    assert second["model_flops_per_s"] == pytest.approx(4000 * per_token / 2.0)
    clock.t += 2.0
    m.log(9000)
    s = m.summary(9000)
    assert s["flops_seen"] == m.flops(9000)
    assert s["model_flops_per_s"] == pytest.approx(6000 * per_token / 4.0)  # the first interval left out
    assert s["mfu"] == pytest.approx(6000 * per_token / 4.0 / (2 * 989e12))
    assert s["flops_accounting"]["timed_intervals"] == 2 and s["flops_accounting"]["matmul_dtype"] == "bfloat16"


def test_meter_on_cpu_reports_rates_but_no_mfu():
    clock = _Clock()
    m = _meter("cpu", clock)
    assert m.summary(0)["model_flops_per_s"] is None  # nothing timed yet
    clock.t += 4.0
    row = m.log(500)
    assert "mfu" not in row and row["model_flops_per_s"] == pytest.approx(m.flops(500) / 4.0)
    s = m.summary(500)
    assert s["mfu"] is None and s["flops_accounting"]["peak_flops_per_s"] is None
    assert s["model_flops_per_s"] == pytest.approx(m.flops(500) / 4.0)  # a single interval: that one
