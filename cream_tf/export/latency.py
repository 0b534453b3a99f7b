"""Batch-1 latency of a `.tflite` file, measured the same way as the other deployment forms
(`benchmarks/deploy_latency.py` times SavedModels and Keras with `median_latency` too)."""
from __future__ import annotations

import statistics
import time

import numpy as np

from cream_tf.export.tflite import load_interpreter

__all__ = ["tflite_latency", "median_latency"]


def tflite_latency(path: str, runs: int = 100, warmup: int = 10, num_threads: int = 1) -> float:
    """Median seconds of one batch-1 `invoke()` of a `.tflite` model (random input)."""
    interpreter = load_interpreter(path, num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if inp["dtype"] == np.float32:
        x = rng.standard_normal(inp["shape"]).astype(np.float32)
    else:
        x = rng.integers(-128, 128, inp["shape"]).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x)
    return median_latency(interpreter.invoke, runs, warmup)


def median_latency(fn, runs: int = 100, warmup: int = 10) -> float:
    """Median seconds of `fn()` over `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
