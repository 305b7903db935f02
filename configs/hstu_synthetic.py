"""HSTU on the synthetic topic-Markov data (data_pipeline/datasets/synthetic.py): the scaling-study base.

Fresh data (a sweep never repeats an event), so no dropout; full softmax over the 2k-item catalogue, because the
law is fitted to full-catalogue cross-entropy and only a calibrated model can approach the process's true
entropy. Each run evaluates once, at its end (scaling runs pick no checkpoint).
"""
from configs import base


def get_config():
    c = base.get_config()
    c.data.dataset = "synthetic-scaling"
    c.data.max_len = 50
    c.data.pack = True
    c.model.name = "hstu"
    c.model.embed_dim = 32
    c.model.num_blocks = 2
    c.model.num_heads = 2
    c.model.head_dim = 16
    c.model.max_seq_len = 61
    c.model.dropout = 0.0
    c.model.use_time_bias = False  # the process has no timestamps
    c.loss.kind = "full_softmax"
    c.optim.schedule = "wsd"
    c.train.batch_size = 32
    c.train.num_epochs = 1
    c.train.eval_every_epochs = 1e9  # only at the end
    c.train.log_every_steps = 100
    c.train.tensorboard = False
    c.checkpoint.every_steps = 0
    c.eval.batch_size = 1024
    return c
