"""Prompts as AUTOMATIC1111's users write them: its attention syntax parsed (a1111_syntax.py) and encoded the way
A1111 encodes it, in 75-token chunks with the weights applied to the token embeddings (weighted_encoding.py)."""


class PromptSyntaxError(ValueError):
    """A prompt A1111's syntax cannot read (a weight that is no finite number, brackets nested past a bound): the
    request is refused naming it rather than run on a guess."""
