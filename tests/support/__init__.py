"""Helpers that drive a real sdapi from outside, shared by the tests and the benchmarks (the way litestar.testing
serves Litestar's users): test configs, the service in-process or as a child process, a throw-away PostgreSQL
cluster, plain GenerationParams, adapter files in the kohya layout. Nothing in sdapi imports this package, and it
does not ship in the wheel."""
