"""Benchmark harness for sandboxd: the same lean client against sandboxd, a bare floor
server and (optionally) a gRPC baseline.  Run it with ``python -m bench``; see README.md."""
