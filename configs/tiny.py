"""A small, fast HSTU for tests and smoke runs (seconds on a CPU)."""
from configs import base


def get_config():
    c = base.get_config()
    c.data.dataset = "beauty"
    c.data.max_len = 20
    c.model.embed_dim = 32
    c.model.num_blocks = 2
    c.model.num_heads = 2
    c.model.head_dim = 16
    c.model.max_seq_len = 31
    c.model.ffn_dim = 32
    c.model.dropout = 0.2
    c.loss.num_negatives = 64
    c.train.batch_size = 64
    c.train.num_epochs = 1
    c.train.log_every_steps = 20
    c.train.eval_every_epochs = 1.0
    c.eval.batch_size = 512
    return c
