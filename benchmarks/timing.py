"""Timing helpers shared by the step benchmarks, so TF and PyTorch are measured the same way."""
import resource
import statistics
import time


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_time(fn, steps: int, warmup: int):
    """Median seconds of `fn(i)` over `steps` calls after `warmup` untimed ones; and all times.
    `i` counts every call (warm-up first), so each call can take a different path."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        fn(warmup + i)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times
