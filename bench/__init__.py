"""bench: the benchmark harness and the real test origin it shares with the test suite."""
