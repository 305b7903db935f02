"""hstu on ml-20m: the reference recipe (see configs/recipes.py)."""
from configs.recipes import recipe


def get_config():
    return recipe("hstu", "ml-20m")
