"""The loopback lab: real and fake DNS servers on 127.0.0.x for tests and benchmarks."""
