"""Size, MACs and batch-1 latency of zoo models in each deployment form.

    python benchmarks/deploy_latency.py                       # cream_14 and cream_43, ~3 min on 2 cores
    python benchmarks/deploy_latency.py --models cream_114 --runs 100 --threads 2

Random weights (latency and size do not depend on them). The int8 model is calibrated on random
images, so only its size and speed are meaningful here; measure its accuracy with
`cream_tf.export.compare_accuracy` on real held-out data. Latency is the median of `--runs` calls
of one image after `--warmup` calls: Keras through a traced `tf.function`, the SavedModel through
its `serving_default` signature (uint8 in, so preprocessing, softmax and top-k included), TFLite
through the interpreter with `--threads` threads.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cream_14,cream_43",
                   help="comma-separated zoo names (cream_14, cream_43, cream_114, cream_287, "
                        "cream_481, cream_604)")
    p.add_argument("--formats", default="keras,savedmodel,tflite-fp32,tflite-int8")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="TF and TFLite threads")
    p.add_argument("--calibration", type=int, default=16,
                   help="random images used to calibrate the int8 model")
    p.add_argument("--keep", default=None, help="directory to keep the exports in")
    return p.parse_args(argv)


FORMATS = ("keras", "savedmodel", "tflite-fp32", "tflite-int8")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cream_tf import export, flops, zoo

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise SystemExit(f"unknown formats {bad}; valid: {', '.join(FORMATS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in models:
        zoo.get(name)  # fails early with the valid names

    out_root = args.keep or tempfile.mkdtemp(prefix="cream_deploy_")
    rows = []
    header = f"{'model':<10} {'format':<12} {'size MB':>8} {'MMACs':>8} {'median ms':>10}"
    print(header)
    print("-" * len(header))
    for name in models:
        keras.utils.set_random_seed(0)
        model = zoo.build(name, num_classes=args.num_classes)
        macs = flops.profile(model).macs
        h, w, _ = model.input_shape[1:]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
        work = os.path.join(out_root, name)
        os.makedirs(work, exist_ok=True)
        for fmt in formats:
            if fmt == "keras":
                path = export.export_keras(model, os.path.join(work, f"{name}.keras"),
                                           overwrite=True)
                fn = tf.function(lambda t: model(t, training=False))
                xt = tf.constant(x)
                seconds = export.median_latency(lambda: fn(xt).numpy(), args.runs, args.warmup)
            elif fmt == "savedmodel":
                path = export.export_saved_model(model, os.path.join(work, "serving"),
                                                 version=1, overwrite=True)
                sig = tf.saved_model.load(path).signatures["serving_default"]
                u = tf.constant(rng.integers(0, 256, (1, h, w, 3)).astype(np.uint8))
                seconds = export.median_latency(lambda: sig(image=u)["probabilities"].numpy(),
                                              args.runs, args.warmup)
            else:
                int8 = fmt == "tflite-int8"
                path = export.export_tflite(
                    model, os.path.join(work, f"{name}{'_int8' if int8 else ''}.tflite"),
                    quantization="int8" if int8 else None,
                    representative_data=rng.standard_normal(
                        (args.calibration, h, w, 3)).astype(np.float32) if int8 else None,
                    overwrite=True)
                seconds = export.tflite_latency(path, runs=args.runs, warmup=args.warmup,
                                                num_threads=args.threads)
            row = (name, fmt, export.disk_size(path) / 1e6, macs / 1e6, seconds * 1e3)
            rows.append(row)
            print(f"{row[0]:<10} {row[1]:<12} {row[2]:>8.2f} {row[3]:>8.1f} {row[4]:>10.2f}",
                  flush=True)
    if not args.keep:
        import shutil
        shutil.rmtree(out_root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
