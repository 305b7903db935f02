"""sasrec on ml-1m: the reference recipe (see configs/recipes.py)."""
from configs.recipes import recipe


def get_config():
    return recipe("sasrec", "ml-1m")
