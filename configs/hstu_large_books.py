"""hstu_large on books: the reference recipe (see configs/recipes.py)."""
from configs.recipes import recipe


def get_config():
    return recipe("hstu_large", "books")
