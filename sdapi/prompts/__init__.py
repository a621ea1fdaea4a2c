"""Prompts as AUTOMATIC1111's users write them: its attention syntax parsed (a1111_syntax.py) and encoded the way
A1111 encodes it, in 75-token chunks with the weights applied to the token embeddings (weighted_encoding.py)."""
