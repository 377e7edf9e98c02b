"""The peers benchmarks/e2e.py measures emailq against, and the workload they all share."""
