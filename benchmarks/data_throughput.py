"""Input-pipeline throughput: images per second of cream_tf.data's training pipelines.

    python benchmarks/data_throughput.py --resolution=224 --batch_size=128 --steps=50

Uses the `synthetic` dataset (no disk I/O, no JPEG decoding), so it measures augmentation only;
compare the number with the training step's images per second: the pipeline must be faster.
"""
import argparse
import time

from cream_tf import data


def measure(ds, steps, batch_size):
    it = iter(ds)
    for _ in range(3):  # tracing and buffer warm-up
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    splits, info = data.load("synthetic", args.resolution)
    recipes = {"eval": None, "search (crop, flip, jitter, erasing)": data.Augment.search(),
               "retrain (crop, flip, RandAugment 2x9, erasing)": data.Augment.retrain()}
    for name, augment in recipes.items():
        if augment is None:
            ds = data.eval_pipeline(splits.train.repeat(), args.resolution, args.batch_size,
                                    crop_pct=0.875)
        else:
            ds = data.train_pipeline(splits.train, args.resolution, args.batch_size,
                                     augment=augment, shuffle_buffer=info.shuffle_buffer)
        rate = measure(ds, args.steps, args.batch_size)
        print(f"{name:48s} {rate:9.1f} images/s at {args.resolution}px")


if __name__ == "__main__":
    main()
