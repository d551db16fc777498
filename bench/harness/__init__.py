"""The benchmark harness behind `bench/run.py`: processes, measurements, the report."""
