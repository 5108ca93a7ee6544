"""Benchmarks: full-size random-weight models on a GPU (gpu_bench), the CPU pipeline (cpu_pipeline), projections."""
