"""Best-checkpoint selection treats cross-entropy as lower-is-better and rejects unknown metric names."""
import pytest

from lrm.training.train import selection_score


def test_selection_score_orders_ce_downward_and_ranking_metrics_upward():
    a, b = {"ce": 5.0, "ndcg@10": 0.1}, {"ce": 4.0, "ndcg@10": 0.2}
    assert selection_score(b, "ce") > selection_score(a, "ce")
    assert selection_score(b, "ndcg@10") > selection_score(a, "ndcg@10")
    with pytest.raises(KeyError, match="select_metric"):
        selection_score(a, "hr@11")
