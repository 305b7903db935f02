"""hstu_large on MovieLens-1M with the loss and schedule chosen on validation (see configs/recipes.py `tuned`)."""
from configs.recipes import tuned


def get_config():
    return tuned("ml-1m")
