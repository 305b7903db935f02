"""hstu_large on ml-20m: the reference recipe (see configs/recipes.py)."""
from configs.recipes import recipe


def get_config():
    return recipe("hstu_large", "ml-20m")
