"""Serving: export a trained run (`export.py`), load and query it with jax + numpy only (`loader.py`),
and a JSON HTTP endpoint (`http.py`)."""
