"""Benchmarks of memsvc: `python -m bench` (see `bench/run.py`) and the locust load test (`bench/locustfile.py`)."""
