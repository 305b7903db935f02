"""sasrec on ml-20m: the reference recipe (see configs/recipes.py)."""
from configs.recipes import recipe


def get_config():
    return recipe("sasrec", "ml-20m")
