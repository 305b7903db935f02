"""HSTU on Amazon Beauty for the scaling study: the Beauty recipe's data and model family, with full softmax
(the law is fitted to full-catalogue cross-entropy, so the model is trained on that objective), packed rows, a
WSD schedule and one evaluation at the end of each run (scaling runs pick no checkpoint).

Beauty is small (about 150k train events): larger budgets repeat it for many epochs, so the recipe's dropout
stays on.
"""
from configs import recipes


def get_config():
    c = recipes.recipe("hstu", "beauty")
    c.data.pack = True
    c.model.num_blocks = 2
    c.model.num_heads = 2
    c.loss.kind = "full_softmax"
    c.optim.schedule = "wsd"
    c.train.batch_size = 8  # small batches: enough steps at the small budgets of a CPU study
    c.train.num_epochs = 1
    c.train.eval_every_epochs = 1e9  # only at the end
    c.train.early_stopping_patience = 0
    c.train.log_every_steps = 100
    c.train.tensorboard = False
    c.checkpoint.every_steps = 0
    c.eval.batch_size = 1024
    return c
