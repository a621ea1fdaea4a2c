"""Textual-inversion embeddings: their files (files.py), the folder of them and which a prompt names (library.py),
and loading them into a torch pipeline's text encoders (loading.py)."""
