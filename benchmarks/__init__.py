"""Throughput and latency benchmarks: the platform against raw clients and Dramatiq, same run."""
