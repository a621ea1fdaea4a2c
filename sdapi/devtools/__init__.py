"""Tools for developers: the tiny model builder, the progress display of long commands, and the helpers the tests and
benchmarks share (testing/)."""
