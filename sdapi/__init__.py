"""sdapi: a Stable Diffusion image-generation HTTP service."""

__version__ = "0.1.0"
