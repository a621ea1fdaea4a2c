"""Helpers that drive a real sdapi from outside, shared by the tests and the benchmarks (the way litestar.testing
serves Litestar's users): test configs, the service in-process or as a child process, plain GenerationParams, LoRA
files in the kohya layout. Nothing in sdapi itself imports this package."""
