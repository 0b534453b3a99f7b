"""Choosing the final architecture from the board (docs/method.md, "Selection and retraining").

The paper takes the most promising board path directly. Board scores are accuracies on single
training batches, measured while the supernet moved, and each op's BatchNorm statistics only saw
the batches whose paths used it. So cream_tf re-scores every board path: it builds the child of the
path with the supernet's weights, re-estimates its BatchNorm statistics on a few training batches
(the exact average of the per-batch moments, forward in training mode), measures top-1 accuracy on
held-out data in inference mode, and picks the best path within the requested MACs range.
The supernet itself is not modified.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from cream_tf import arch as arch_lib
from cream_tf import child as child_lib
from cream_tf import data as data_lib
from cream_tf import flops
from cream_tf.errors import InputError
from cream_tf.space import Space
from cream_tf.supernet import SuperNet, inherit_weights, nested_path

__all__ = ["Selection", "select", "evaluate_path", "recalibrate_batch_norm", "selection_inputs"]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen path and the ranked table of every candidate (best accuracy first).

    Table rows: {"path": per-stage lists, "paper": str, "macs": int, "params": int,
    "accuracy": float (percent, held-out; None for paths outside the range, which are not
    evaluated), "board_score": float, "in_range": bool}. Rows in range come first, best first.
    """

    best: dict
    table: tuple
    macs_range: tuple

    @property
    def path(self):
        return self.best["path"]

    def to_text(self) -> str:
        lines = [f"{'#':>2}  {'acc %':>6}  {'MACs':>13}  {'params':>10}  arch"]
        for i, row in enumerate(self.table):
            mark = "*" if row is self.best else (" " if row["in_range"] else "-")
            acc = "   n/a" if row["accuracy"] is None else f"{row['accuracy']:6.2f}"
            lines.append(f"{i + 1:>2}{mark} {acc}  {row['macs']:>13,}  "
                         f"{row['params']:>10,}  {row['paper']}")
        lo, hi = (d if v is None else format(v, ",")
                  for v, d in zip(self.macs_range, ("-inf", "inf")))
        lines.append(f"* chosen; - outside the MACs range [{lo}, {hi}]")
        return "\n".join(lines)

    def __str__(self):
        return self.to_text()


def _nested(path, space: Space):
    return arch_lib.validate_path(nested_path(path, space), space)


def recalibrate_batch_norm(model: keras.Model, batches) -> int:
    """Sets every BatchNormalization's moving statistics to the average of its batch moments.

    Runs `model(x, training=True)` over `batches` (an iterable of image batches) with momentum 0,
    so each pass leaves exactly that batch's moments in the moving variables, and averages them
    (mean of means, mean of variances). Returns the number of batches used.
    """
    bns = [l for l in flops.leaf_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    sums = [[np.zeros(bn.moving_mean.shape), np.zeros(bn.moving_variance.shape)] for bn in bns]
    count = 0
    try:
        for bn in bns:
            bn.momentum = 0.0
        forward = tf.function(lambda x: model(x, training=True))
        for x in batches:
            forward(x)
            for s, bn in zip(sums, bns):
                s[0] += bn.moving_mean.numpy()
                s[1] += bn.moving_variance.numpy()
            count += 1
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    if count == 0:
        raise InputError("recalibrate_batch_norm needs at least one batch")
    for s, bn in zip(sums, bns):
        bn.moving_mean.assign((s[0] / count).astype(np.float32))
        bn.moving_variance.assign((s[1] / count).astype(np.float32))
    return count


def selection_inputs(splits, info, resolution: int) -> tuple:
    """(training examples for the BatchNorm re-estimation, held-out `val` examples) as selection
    scores paths on them: unbatched, in a fixed order and without augmentation, so a path's
    score is the same on every run (`splits`, `info`: from `data.load`)."""
    return tuple(data_lib.eval_pipeline(split, resolution, crop_pct=info.eval_crop_pct)
                 for split in (splits.train, splits.val))


def evaluate_path(space: Space, supernet: SuperNet, path, train_ds, val_ds, bn_batches: int,
                  batch_size: int) -> float:
    """Top-1 accuracy (percent) on `val_ds` of `path`'s child with inherited weights, after
    BatchNorm re-estimation on `bn_batches` batches of `train_ds` (0 = keep the supernet's)."""
    nested = _nested(path, space)
    model = child_lib.build(nested, space)
    inherit_weights(model, supernet, nested)
    if bn_batches:
        batches = (x for x, _ in train_ds.batch(batch_size, drop_remainder=True).take(bn_batches))
        recalibrate_batch_norm(model, batches)
    predict = tf.function(lambda x: model(x, training=False))
    correct = total = 0
    for x, y in val_ds.batch(batch_size):
        pred = tf.argmax(predict(x), axis=-1, output_type=tf.int32).numpy()
        correct += int((pred == y.numpy().astype(np.int32)).sum())
        total += len(pred)
    if total == 0:
        raise InputError("val_ds is empty")
    return 100.0 * correct / total


def select(space: Space, supernet: SuperNet, board, train_ds: tf.data.Dataset,
           val_ds: tf.data.Dataset, macs_range=None, bn_batches: int = 10,
           batch_size: int = 64) -> Selection:
    """Evaluates every board path and returns the best one within `macs_range`.

    Args:
      space: the search space.
      supernet: the trained supernet.
      board: the `Board` (or a list of entries {"path": flat ints, "score": float, ...}).
      train_ds: unbatched (image, label) training data for BatchNorm re-estimation; use a
        deterministic (no random augmentation) view for a reproducible ranking.
      val_ds: unbatched held-out (image, label) data, finite.
      macs_range: (min, max) MACs, inclusive; None or a None end = unbounded.
        `Selection.macs_range` keeps None for an open end.
      bn_batches: training batches for the BatchNorm re-estimation (0 keeps the supernet's).
      batch_size: batch size of both passes.
    """
    entries = board.entries() if hasattr(board, "entries") else list(board)
    if not entries:
        raise InputError("the board is empty: nothing to select (run the search longer)")
    low, high = flops.macs_range(macs_range)
    table = flops.cost_table(space)
    rows = []
    for entry in entries:
        nested = _nested(entry["path"], space)
        macs = table.path_macs(nested)
        in_range = (low is None or macs >= low) and (high is None or macs <= high)
        # only paths inside the range are evaluated (the others cannot be chosen)
        accuracy = (evaluate_path(space, supernet, nested, train_ds, val_ds, bn_batches,
                                  batch_size) if in_range else None)
        rows.append({"path": [list(s) for s in nested],
                     "paper": arch_lib.path_to_arch(nested, space).to_paper(),
                     "macs": macs, "params": table.path_params(nested), "accuracy": accuracy,
                     "board_score": float(entry.get("score", float("nan"))),
                     "in_range": in_range})
    rows.sort(key=lambda r: (not r["in_range"], -(r["accuracy"] or 0.0), r["macs"]))
    candidates = [r for r in rows if r["in_range"]]
    if not candidates:
        have = ", ".join(format(m, ",") for m in sorted(r["macs"] for r in rows))
        raise InputError(f"no board path has MACs in [{low}, {high}]; the board's paths "
                         f"have {have} MACs")
    return Selection(candidates[0], tuple(rows), (low, high))
