"""The prioritized board of Cream: the K best paths seen during the search.

The method, with the release's numbers: docs/method.md, "The prioritized board and the matching
network".

Every entry keeps its path, its score (top-1 accuracy in percent on the step's batch), its MACs, a
few stored images and the path's own softmax outputs on them. The state lives in fixed-capacity
`tf.Variable`s, padded to K and kept sorted best first, so that

* `tf.train.Checkpoint(board=board)` saves and restores it (a resumed search continues with the
  same board), and
* a `tf.function` (also per replica, inside `strategy.run`) reads the teacher candidates from it
  without retracing when the board changes.

Updates are decided on the host (`Board.update`, eager, cross-replica context): the decision reads
only the small variables (paths, scores, MACs, size); the images and probabilities are reordered on
the device with one gather and only when the board changes.

Entry rule: a new path enters when the board is not full, or when its score beats the
worst entry by more than `gap`, or beats it (strictly) with strictly fewer MACs. The board is sorted
by score, ties broken by fewer MACs (then by age: an incumbent ranks before a newcomer with the
same score and MACs); beyond K the worst entry drops out.

A path that is already on the board never enters twice: its entry *updates*, whatever the new
score. "Updates" means the entry takes the new measurement entirely (score, MACs, images and
probabilities) and the board is re-sorted, so the entry can move up or down. The rationale: a
board entry describes the path under the current supernet weights; keeping a stale score from a
lucky batch would let that path hold its place forever.

Non-finite scores, images or probabilities are rejected (`update` returns False, with a warning):
a NaN must never reach the teacher selection or the sort.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import tensorflow as tf

from cream_tf import arch as arch_lib

__all__ = ["Board"]

_log = logging.getLogger(__name__)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


class Board(tf.Module):
    """The prioritized board (docs/method.md, "The prioritized board and the matching network").

    State lives in tf.Variables so it checkpoints with tf.train.Checkpoint and can be read inside a
    tf.function; create it inside `strategy.scope()` when training under a tf.distribute strategy
    (the variables are then mirrored; `update` runs on the host, in cross-replica context).

    Args:
      capacity: K, the number of entries (release: 10).
      num_layers: L, the number of searchable layers (`space.num_layers`); paths are flat.
      num_images: n, images stored per entry (release: 4).
      image_shape: (H, W, C) of the stored images.
      num_classes: width of the stored softmax outputs.
      gap: accuracy gap in percentage points to replace the worst entry without fewer MACs
        (release: 5).

    Variables (padded to K, sorted best first: score descending, ties: fewer MACs first):
      paths int32 [K, L]; scores float32 [K]; macs int64 [K]; images float32 [K, n, H, W, C];
      probs float32 [K, n, num_classes]; size int32 [] (the number of valid entries).
    """

    def __init__(self, capacity: int, num_layers: int, num_images: int, image_shape: tuple,
                 num_classes: int, gap: float = 5.0, name: str = "board"):
        super().__init__(name=name)
        self.capacity = _positive_int(capacity, "capacity")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.num_images = _positive_int(num_images, "num_images")
        try:
            image_shape = tuple(int(d) for d in image_shape)
        except (TypeError, ValueError):
            raise ValueError(f"image_shape must be (height, width, channels), got "
                             f"{image_shape!r}") from None
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be 3 positive ints (height, width, channels), "
                             f"got {image_shape!r}")
        self.image_shape = image_shape
        self.num_classes = _positive_int(num_classes, "num_classes")
        if isinstance(gap, bool) or not isinstance(gap, (int, float, np.floating, np.integer)) \
                or not np.isfinite(gap) or gap < 0:
            raise ValueError(f"gap must be a finite number >= 0 (percentage points), got {gap!r}")
        self.gap = float(gap)
        k, n = self.capacity, self.num_images
        with self.name_scope:
            self.paths = self._variable([k, self.num_layers], tf.int32, "paths")
            self.scores = self._variable([k], tf.float32, "scores")
            self.macs = self._variable([k], tf.int64, "macs")
            self.images = self._variable([k, n, *image_shape], tf.float32, "images")
            self.probs = self._variable([k, n, self.num_classes], tf.float32, "probs")
            self.size = self._variable([], tf.int32, "size")

    @staticmethod
    def _variable(shape, dtype, name):
        # ONLY_FIRST_REPLICA: the host writes the same value to every replica; should anything
        # assign in replica context, replica 0's value wins instead of an aggregation error.
        return tf.Variable(tf.zeros(shape, dtype), trainable=False, name=name,
                           synchronization=tf.VariableSynchronization.ON_WRITE,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    # -- host-side update ----------------------------------------------------------------------
    def _check_path(self, path) -> np.ndarray:
        if isinstance(path, (tf.Tensor, tf.Variable)):
            path = path.numpy()
        seq = list(path) if not isinstance(path, np.ndarray) else None
        if seq is not None and seq and all(isinstance(s, (list, tuple, np.ndarray)) for s in seq):
            path = arch_lib.flat_path(seq)  # a per-stage path: flatten
        arr = np.asarray(path)
        if arr.ndim != 1 or arr.shape[0] != self.num_layers or not (
                np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"path must be {self.num_layers} op indices (flat, or one list per "
                             f"stage), got {path!r}")
        if arr.min() < 0:
            raise ValueError(f"path op indices must be >= 0, got {arr.tolist()}")
        return arr.astype(np.int32)

    def _check_batch(self, value, trailing: tuple, what: str) -> np.ndarray:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            value = value.numpy()
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim != 1 + len(trailing) or arr.shape[1:] != trailing or \
                arr.shape[0] < self.num_images:
            raise ValueError(f"{what} must have shape [m, {', '.join(map(str, trailing))}] with "
                             f"m >= num_images = {self.num_images}; got {arr.shape}")
        return arr[:self.num_images]

    def update(self, path, score: float, macs: int, images, probs) -> bool:
        """Offers a path's measurement to the board (host side, eager). Returns True on change.

        Args:
          path: the path, L op indices (flat, or one sequence per stage).
          score: its top-1 accuracy in percent on the step's batch (averaged over replicas).
          macs: its MACs.
          images: at least n images [m, H, W, C]; the first n are stored.
          probs: the path's own softmax outputs on those images [m, num_classes]; first n stored.
        """
        if not tf.executing_eagerly():
            raise RuntimeError("Board.update runs on the host, eagerly (numpy inputs); call it "
                               "outside tf.function / strategy.run")
        path = self._check_path(path)
        if isinstance(macs, (tf.Tensor, tf.Variable)):
            macs = macs.numpy()
        if isinstance(macs, np.ndarray) and macs.ndim == 0:
            macs = macs[()]
        if isinstance(macs, bool) or not isinstance(macs, (int, np.integer)) or macs < 0:
            raise ValueError(f"macs must be an int >= 0, got {macs!r}")
        macs = int(macs)
        images = self._check_batch(images, self.image_shape, "images")
        probs = self._check_batch(probs, (self.num_classes,), "probs")
        score = np.float32(score)  # compare what will be stored
        if not np.isfinite(score):
            _log.warning("board: rejected path %s with non-finite score %s", path.tolist(), score)
            return False
        if not (np.isfinite(images).all() and np.isfinite(probs).all()):
            _log.warning("board: rejected path %s with non-finite images or probabilities",
                         path.tolist())
            return False

        k = self.capacity
        size = int(self.size.numpy())
        old_paths = self.paths.numpy()[:size]
        old_scores = self.scores.numpy()[:size]
        old_macs = self.macs.numpy()[:size]
        # rows: (score, macs, source); source < k is an old slot, k is the new measurement.
        rows = [(float(s), int(m), i) for i, (s, m) in enumerate(zip(old_scores, old_macs))]
        same = np.flatnonzero((old_paths == path).all(axis=1)) if size else np.array([], int)
        if same.size:
            rows[int(same[0])] = (float(score), macs, k)
        elif size < k:
            rows.append((float(score), macs, k))
        else:
            worst_score, worst_macs, _ = rows[-1]
            if not (score > worst_score + self.gap or (score > worst_score and macs < worst_macs)):
                return False
            rows.append((float(score), macs, k))
        rows.sort(key=lambda r: (-r[0], r[1]))  # stable: incumbents first among equals
        rows = rows[:k]
        sources = [r[2] for r in rows]
        if k not in sources:  # unreachable by the rule above; kept as a guard
            return False

        new_size = len(rows)
        paths = np.zeros([k, self.num_layers], np.int32)
        scores = np.zeros([k], np.float32)
        macs_arr = np.zeros([k], np.int64)
        for slot, (s, m, src) in enumerate(rows):
            paths[slot] = path if src == k else old_paths[src]
            scores[slot] = s
            macs_arr[slot] = m
        # Images/probs: one gather over [old slots..., new, zeros] on the device.
        order = tf.constant(sources + [k + 1] * (k - new_size), tf.int32)
        for var, new in ((self.images, images), (self.probs, probs)):
            pool = tf.concat([tf.convert_to_tensor(var), tf.convert_to_tensor(new)[None],
                              tf.zeros([1, *new.shape], tf.float32)], axis=0)
            var.assign(tf.gather(pool, order))
        self.paths.assign(paths)
        self.scores.assign(scores)
        self.macs.assign(macs_arr)
        self.size.assign(new_size)
        return True

    # -- reading ---------------------------------------------------------------------------------
    def entries(self) -> list:
        """The valid entries best first: [{"path": [ints], "score": float, "macs": int}, ...]."""
        size = int(self.size.numpy())
        paths, scores, macs = self.paths.numpy(), self.scores.numpy(), self.macs.numpy()
        # float(str(float32)): the shortest decimal that round-trips, 71.3 rather than 71.30000305
        return [{"path": [int(i) for i in paths[j]], "score": float(str(scores[j])),
                 "macs": int(macs[j])} for j in range(size)]

    def to_json(self, space) -> str:
        """The entries as JSON, each with the paper notation of its architecture ("paper")."""
        if space.num_layers != self.num_layers:
            raise ValueError(f"the board holds paths of {self.num_layers} layers; space "
                             f"{space} has {space.num_layers}")
        result = []
        for entry in self.entries():
            paper = arch_lib.path_to_arch(arch_lib.nested_path(entry["path"], space),
                                          space).to_paper()
            result.append({"path": entry["path"], "paper": paper, "macs": entry["macs"],
                           "score": entry["score"]})
        return json.dumps(result, indent=2)
