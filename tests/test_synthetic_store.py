"""The synthetic store is written once per generator config and never silently reused for another."""
import pytest

from data_pipeline.datasets import synthetic as sy
from data_pipeline.store import SequenceStore


def test_synthetic_store_is_reused_for_its_config_and_refused_for_another(tmp_path):
    cfg = sy.SyntheticConfig(num_users=40, num_items=30, num_topics=3, num_personas=2, fanout=2, mean_len=6,
                             max_len=10, name="syn-store")
    path = sy.write_synthetic_store(cfg, tmp_path)
    store = SequenceStore.open(path)
    assert store.num_users == 40 and store.num_items == 30
    assert sy.write_synthetic_store(cfg, tmp_path) == path  # same config: reused
    other = sy.SyntheticConfig(num_users=40, num_items=30, num_topics=3, num_personas=2, fanout=2, mean_len=6,
                               max_len=10, name="syn-store", seed=1)
    with pytest.raises(ValueError, match="generator config"):
        sy.write_synthetic_store(other, tmp_path)
