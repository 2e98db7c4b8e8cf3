"""Studies and benchmarks: what measures the method, apart from the method itself (python -m studies)."""
