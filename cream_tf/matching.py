"""Teacher selection, the Cream loss and the matching network's meta-gradient.

The method: docs/method.md, "The prioritized board and the matching network"; where this differs
from the authors' release: docs/method.md, "Where cream_tf departs from the release".

* `MatchingNetwork` M scores a board entry from the difference between the student's softmax on the
  entry's stored images and the entry's stored softmax (release: one dense layer, n*classes -> 1).
* `select_teacher` picks the teacher among the valid board entries: 'top1' (the best entry,
  rho = 0.5) or 'meta' (the entry M scores highest, rho = sigmoid of *that* entry's score).
* `cream_loss` is the distillation objective (rho * KD + (2 - rho) * CE) / 2, reduced for
  tf.distribute.
* `meta_update` is the release's meta step for M: the KD gradient of the student on a slice, one
  simulated step of the student's weights with M's rate (kept as a function of M), a real student
  step on the same gradient (the caller's optimizer), then the cross-entropy of the stepped student
  on the next slice, differentiated into M through the simulated step and through *all* the
  student's weights. `meta_gradients` is its stateless form (no real step: the outer loss is
  taken at the simulated weights).

Everything here is traceable: it runs inside `tf.function` and per replica inside `strategy.run`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

__all__ = ["MatchingNetwork", "select_teacher", "student_board_probs", "cream_loss",
           "meta_gradients", "meta_update", "MetaUpdate", "replica_mean", "TEACHER_MODES",
           "INNER_LOSSES", "CLIP_NORM"]

TEACHER_MODES = ("top1", "meta")
INNER_LOSSES = ("kd", "cream")
# The release clips both gradients of its meta step (the student's real step and M's) to this
# global norm.
CLIP_NORM = 1.0


@keras.saving.register_keras_serializable(package="cream_tf")
class MatchingNetwork(keras.Model):
    """M of Cream: one Dense(1) on the flattened [n, classes] softmax difference of an entry.

    Initialised as the release's M after its weight init (fan_out 1): kernel uniform in [-1, 1],
    bias 0. Scores then start of order one (a small start leaves rho at 0.5 and M's gradient
    near zero). Built on
    construction: its variables exist as soon as it is created (inside `strategy.scope()` if it
    should be mirrored), so an optimizer can be built on them before any step is traced.

    Args:
      num_images: n, images stored per board entry.
      num_classes: classes of the softmax.
      seed: optional int for reproducible initial weights.
    """

    def __init__(self, num_images: int, num_classes: int, seed=None, **kwargs):
        super().__init__(**kwargs)
        for value, what in ((num_images, "num_images"), (num_classes, "num_classes")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive int, got {value!r}")
        self.num_images = num_images
        self.num_classes = num_classes
        self.seed = seed
        self.dense = keras.layers.Dense(
            1, name="dense", dtype=self.dtype_policy,
            kernel_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=seed),
            bias_initializer="zeros")
        self.build((None, num_images, num_classes))

    def build(self, input_shape):
        self.dense.build((None, self.num_images * self.num_classes))
        self.built = True

    def call(self, diff):
        """diff [K, n, classes] -> scores [K]."""
        shape = tuple(diff.shape)
        if len(shape) != 3 or shape[1:] != (self.num_images, self.num_classes):
            raise ValueError(f"MatchingNetwork takes [K, {self.num_images}, {self.num_classes}] "
                             f"softmax differences, got shape {shape}")
        flat = keras.ops.reshape(diff, (-1, self.num_images * self.num_classes))
        return keras.ops.squeeze(self.dense(flat), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(num_images=self.num_images, num_classes=self.num_classes, seed=self.seed)
        return config


def student_board_probs(forward, board_images, board_size):
    """The student's softmax on every board entry's images, in ONE batched forward.

    Args:
      forward: callable images [K*n, H, W, C] -> logits [K*n, classes] (e.g.
        `lambda x: supernet(x, path=path, training=True)`).
      board_images: [K, n, H, W, C] (`board.images`), K and n static.
      board_size: int32 scalar, the number of valid entries.

    Returns:
      float32 probabilities [K, n, classes] (float64 for a float64 model). The forward always
      has the static shape
      [K*n, H, W, C]; empty slots are filled with copies of valid entries (slot j holds entry
      j mod size), so a training-mode BatchNorm never sees padding zeros. Their rows are masked by
      `select_teacher`.
    """
    board_images = tf.convert_to_tensor(board_images)
    k, n = board_images.shape[0], board_images.shape[1]
    if k is None or n is None:
        raise ValueError(f"board_images needs static K and n, got shape {board_images.shape}")
    source = tf.range(k) % tf.maximum(tf.cast(board_size, tf.int32), 1)
    images = tf.reshape(tf.gather(board_images, source), [k * n, *board_images.shape[2:]])
    logits = tf.convert_to_tensor(forward(images))
    probs = tf.nn.softmax(_float(logits), axis=-1)
    return tf.reshape(probs, [k, n, -1])


def select_teacher(mode: str, student_probs, board_probs, board_size, matching=None):
    """Chooses the teacher entry of the board.

    The method: docs/method.md, "The prioritized board and the matching network".

    rho is the sigmoid of the *chosen* entry's score; the release takes that of the last entry
    it scored (docs/method.md, "Where cream_tf departs from the release").

    Args:
      mode: 'top1' (best entry, rho = 0.5) or 'meta' (argmax of M over the valid entries).
      student_probs: [K, n, classes] the student's softmax on each entry's stored images
        (`student_board_probs`). Unused by 'top1'.
      board_probs: [K, n, classes] each entry's stored softmax (`board.probs`).
      board_size: int32 scalar; entries at index >= board_size are empty and never chosen.
      matching: the `MatchingNetwork` (required for 'meta').

    Returns:
      (index int32 scalar, rho scalar, scores [K]), rho and scores in M's dtype (float32 unless M
      was made float64) for 'meta'. With 'top1' the scores are zeros. `rho` keeps its gradient
      to M's weights and to `student_probs`: the training loss trains M (and the student,
      through its board scoring) through it, as the release does.

      Entries whose softmax difference or score is not finite are never chosen. If no valid entry
      has a finite score (or the board is empty), the result is the best entry (index 0) with
      rho = 0.5: non-finite scores never leave the board without a teacher, and rho stays finite.
      The gradient to M is then zero (finite).
    """
    if mode not in TEACHER_MODES:
        raise ValueError(f"unknown teacher mode {mode!r}; valid modes: {', '.join(TEACHER_MODES)}")
    board_probs = tf.convert_to_tensor(board_probs)
    k = tf.shape(board_probs)[0]
    if mode == "top1":
        return (tf.constant(0, tf.int32), tf.constant(0.5, tf.float32),
                tf.zeros([k], tf.float32))
    if matching is None:
        raise ValueError("teacher mode 'meta' needs the matching network (matching=...)")
    dtype = tf.as_dtype(matching.compute_dtype)
    diff = tf.cast(student_probs, dtype) - tf.cast(board_probs, dtype)
    row_ok = tf.reduce_all(tf.math.is_finite(diff), axis=[1, 2])
    # zero non-finite rows so that neither the score nor M's gradient (X^T dY) sees a NaN
    diff = tf.where(row_ok[:, None, None], diff, tf.zeros_like(diff))
    scores = tf.cast(matching(diff), dtype)
    usable = row_ok & tf.math.is_finite(scores) & (tf.range(k) < tf.cast(board_size, tf.int32))
    found = tf.reduce_any(usable)
    masked = tf.where(usable, scores, tf.fill(tf.shape(scores), tf.constant(-math.inf, dtype)))
    index = tf.where(found, tf.argmax(masked, output_type=tf.int32), 0)
    chosen = tf.where(found, tf.gather(scores, index), tf.zeros([], dtype))
    rho = tf.where(found, tf.sigmoid(chosen), tf.constant(0.5, dtype))
    return index, rho, scores


def _smoothed_ce(labels, log_probs, label_smoothing):
    num_classes = tf.shape(log_probs)[-1]
    if labels.shape.rank == log_probs.shape.rank:  # already a distribution (e.g. one-hot, mixup)
        target = tf.cast(labels, log_probs.dtype)
    else:
        target = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=log_probs.dtype)
    if label_smoothing:
        smoothing = tf.cast(label_smoothing, log_probs.dtype)
        target = target * (1 - smoothing) + smoothing / tf.cast(num_classes, log_probs.dtype)
    return -tf.reduce_sum(target * log_probs, axis=-1)


def _soft_ce(teacher_logits, log_probs):
    soft = tf.nn.softmax(tf.cast(tf.stop_gradient(teacher_logits), log_probs.dtype), axis=-1)
    return -tf.reduce_sum(soft * log_probs, axis=-1)


def _float(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype in (tf.float32, tf.float64) else tf.cast(x, tf.float32)


def cream_loss(labels, student_logits, teacher_logits, rho, label_smoothing, global_batch_size):
    """The Cream training loss, reduced for tf.distribute.

    per example: (rho * KD + (2 - rho) * CE) / 2, with KD = sum_k -softmax(teacher)_k *
    log_softmax(student)_k (temperature 1) and CE the cross-entropy with label smoothing
    (targets (1 - s) * onehot + s / classes). Reduced with
    `tf.nn.compute_average_loss(global_batch_size=...)`: the sum over this replica's examples
    divided by the global batch; the optimizer's all-reduce then sums the replicas.

    `labels` are int class ids [B] or target distributions [B, classes]. `teacher_logits=None`
    gives plain CE (the warm-up loss). Gradients stop at the teacher logits (the teacher runs
    without gradient) but not at rho: as in the release, the loss trains the matching network
    (and the student's board scoring) through rho, with dL/drho = (KD - CE) / 2 per example.
    """
    logits = _float(student_logits)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    ce = _smoothed_ce(tf.convert_to_tensor(labels), log_probs, label_smoothing)
    if teacher_logits is None:
        per_example = ce
    else:
        r = tf.cast(rho, logits.dtype)
        per_example = (r * _soft_ce(teacher_logits, log_probs) + (2 - r) * ce) / 2
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)


def _batch_sizes(global_batch_size):
    if isinstance(global_batch_size, (tuple, list)):
        if len(global_batch_size) != 2:
            raise ValueError(f"global_batch_size is one int or (kd, val), got "
                             f"{global_batch_size!r}")
        return tuple(global_batch_size)
    return global_batch_size, global_batch_size


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


def replica_mean(tensor):
    """The mean over the replicas in sync (the tensor itself on one device); differentiable.

    The student's board scoring goes through it so that every replica picks the same teacher.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, tensor)


class MetaUpdate(NamedTuple):
    """What `meta_update` returns."""

    grads: list      # one per `matching.trainable_variables`; this replica's share of the sum
    state: list      # the model's non-trainable values after the update's forwards
    teacher: tf.Tensor  # index of the chosen board entry
    rho: tf.Tensor


def meta_gradients(model, path, matching, board_images, board_probs, board_size,
                   x_kd, y_kd, x_val, y_val, lr, label_smoothing, global_batch_size,
                   *, board_paths=None, inner_loss: str = "kd", training: bool = True,
                   forward=None):
    """M's meta-gradient with a simulated student step only, the model left untouched.

    `meta_update` without `student_step`: the outer loss is taken at the simulated weights
    w' = w - lr * dL/dw, so the result is the exact gradient of J(w'(M)). Returns the list of
    gradients of `matching.trainable_variables`. Arguments as `meta_update`.
    """
    return meta_update(model, path, matching, board_images, board_probs, board_size, x_kd, y_kd,
                       x_val, y_val, lr, label_smoothing, global_batch_size,
                       board_paths=board_paths, inner_loss=inner_loss, training=training,
                       forward=forward).grads


def meta_update(model, path, matching, board_images, board_probs, board_size,
                x_kd, y_kd, x_val, y_val, lr, label_smoothing, global_batch_size,
                *, board_paths=None, inner_loss: str = "kd", training: bool = True,
                forward=None, weights=None, state=None, student_step=None,
                scoring_gradient: bool = True) -> MetaUpdate:
    """One meta step of M (docs/method.md, "The prioritized board and the matching network").

    1. The student (`path`) scores every board entry in one batched forward
       (`student_board_probs`), averaged over the replicas so that every replica picks the same
       teacher; `select_teacher('meta', ...)` picks it and rho.
    2. The teacher path (`board_paths[index]`) runs on `x_kd` without gradient.
    3. Inner loss on (x_kd, y_kd): 'kd' (default, the release) = rho * KD; 'cream' = the training
       loss (rho * KD + (2 - rho) * CE) / 2. Its gradient g over all the model's trainable
       weights is summed over the replicas, so every replica holds the global slice's g.
    4. Simulated step w' = w - lr * g, `lr` being M's current rate as in the release. Only its
       dependence on M (through rho) matters; it is exact and first-order (see the code).
    5. `student_step(g)`, when given, takes the real student step (the release's, with the
       student's optimizer and g clipped to `CLIP_NORM`) and returns the new weights; the outer
       loss is taken there. Without it the outer loss is taken at w' and nothing is written.
    6. Label-smoothed CE of the stepped student on (x_val, y_val), differentiated into M through
       w' and every weight (the release reaches M through the stem conv only: docs/method.md,
       "Where cream_tf departs from the release").

    Forwards are stateless (`forward`, by default `model.stateless_call`) and chain the BatchNorm
    statistics from one to the next in training mode, as the release's in-place forwards do; the
    caller writes `MetaUpdate.state` back if it wants them. Summing the returned gradients over
    the replicas (as an optimizer's all-reduce does) gives the global meta-gradient.

    Args:
      model: a built keras.Model called as model(x, path=path, training=...).
      path: the student path (int32 [L] tensor).
      matching: the `MatchingNetwork`.
      board_images, board_probs, board_size: `board.images`, `board.probs`, `board.size`.
      x_kd, y_kd: the inner slice; x_val, y_val: the outer slice (int labels or distributions).
      lr: rate of the simulated step (scalar).
      label_smoothing: of every CE here (the training loss's, release 0.1).
      global_batch_size: examples in the inner and in the outer slice over all replicas: one
        int for both, or a pair (kd, val).
      board_paths: `board.paths` [K, L], required: the teacher path comes from it.
      inner_loss: 'kd' or 'cream' (see 3).
      training: mode of every forward (release: training mode).
      forward: optional stateless forward of `model`, callable(weights, state, images, path) ->
        (logits, new_state) such as a `supernet.PathForward` of mode `training`; the training
        step's own, so the update reuses its trace.
      weights, state: the values to start from (default: read from `model`), aligned with
        `model.trainable_variables` and `model.non_trainable_variables`.
      student_step: optional callable(g) -> new weights (see 5).
      scoring_gradient: False treats the board scoring as a constant of the student's weights
        (`SearchConfig.scoring_gradient`): g = rho * dA/dw, and no second-order term.
    """
    if board_paths is None:
        raise ValueError("meta_update needs board_paths=board.paths: the chosen teacher's path "
                         "is read from it")
    if inner_loss not in INNER_LOSSES:
        raise ValueError(f"unknown inner_loss {inner_loss!r}; valid: {', '.join(INNER_LOSSES)}")
    gb_kd, gb_val = _batch_sizes(global_batch_size)
    path = tf.convert_to_tensor(path)
    if weights is None:
        weights = [tf.identity(v.value) for v in model.trainable_variables]
    if state is None:
        state = [tf.identity(v.value) for v in model.non_trainable_variables]
    weights, chain = list(weights), [list(state)]

    def call(w, s, x, p):
        if forward is None:
            logits, after = model.stateless_call(w, s, x, path=p, training=training)
        else:
            logits, after = forward(w, s, x, p)
        return tf.convert_to_tensor(logits), list(after)

    def run(w, x, p):  # a forward that passes its BatchNorm statistics on to the next
        logits, chain[0] = call(w, chain[0], x, p)
        return logits

    start_state = list(chain[0])

    def scoring(w, chained=True):
        one = (lambda x: run(w, x, path)) if chained else (
            lambda x: call(w, start_state, x, path)[0])
        return student_board_probs(one, board_images, board_size)

    # 1-3 on one tape: the student scores the board with gradient, as in the release, so rho
    # depends on the student's weights as well as on M, and the inner gradient holds
    # A * drho/dw besides rho * dA/dw. The inner loss is linear in rho, L = rho * A + B ('kd':
    # A = KD, B = 0; 'cream': A = (KD - CE) / 2, B = CE).
    with tf.GradientTape(persistent=True) as inner:
        inner.watch(weights)
        student_probs = replica_mean(scoring(weights))
        if not scoring_gradient:
            student_probs = tf.stop_gradient(student_probs)
        with tf.GradientTape() as rho_tape:
            index, rho, _ = select_teacher("meta", student_probs, board_probs, board_size,
                                           matching)
        teacher_path = tf.cast(tf.gather(tf.convert_to_tensor(board_paths), index), path.dtype)
        teacher_logits = tf.stop_gradient(run(weights, x_kd, teacher_path))
        logits = _float(run(weights, x_kd, path))
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        kd = tf.nn.compute_average_loss(_soft_ce(teacher_logits, log_probs),
                                        global_batch_size=gb_kd)
        if inner_loss == "kd":
            slope, offset = kd, None
        else:
            ce = tf.nn.compute_average_loss(
                _smoothed_ce(tf.convert_to_tensor(y_kd), log_probs, label_smoothing),
                global_batch_size=gb_kd)
            slope, offset = (kd - ce) / 2, ce
        loss = tf.cast(rho, slope.dtype) * slope + (0.0 if offset is None else offset)
    drho = rho_tape.gradient(rho, matching.trainable_variables)
    grads = inner.gradient(loss, weights)   # g = rho * dA/dw + A * drho/dw (+ dB/dw)
    dslope = inner.gradient(slope, weights)  # dA/dw
    del inner
    chosen_diff = tf.stop_gradient(tf.gather(student_probs, index)
                                   - tf.cast(tf.gather(board_probs, index), student_probs.dtype))
    used = [i for i, g in enumerate(grads) if g is not None]
    total_slope = slope
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1 and used:
        # every replica steps to the same w' as one device on the global batch would
        both = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  [grads[i] for i in used] + [dslope[i] for i in used]
                                  + [slope])
        for k, i in enumerate(used):
            grads[i], dslope[i] = both[k], both[len(used) + k]
        total_slope = both[-1]
    if student_step is None:
        stepped = [w if g is None else w - tf.cast(lr, w.dtype) * g
                   for w, g in zip(weights, grads)]
    else:
        stepped = list(student_step([tf.zeros_like(w) if g is None else g
                                     for w, g in zip(weights, grads)]))
    # 4-6: outer loss with the stepped weights, and its gradient v there.
    with tf.GradientTape() as val_tape:
        val_tape.watch(stepped)
        val_logits = _float(run(stepped, x_val, path))
        val_ce = _smoothed_ce(tf.convert_to_tensor(y_val), tf.nn.log_softmax(val_logits, -1),
                              label_smoothing)
        val_loss = tf.nn.compute_average_loss(val_ce, global_batch_size=gb_val)
    dval = val_tape.gradient(val_loss, stepped)
    # The simulated step w' = w - lr * g depends on M through g = rho * dA/dw + A * drho/dw,
    # so dJ/dM = -lr * (<v, dA/dw> * drho/dM + A * d<v, drho/dw>/dM). The first term needs
    # first-order gradients only. In the second, drho/dw = drho/dd * J with d the chosen
    # entry's softmax difference and J its Jacobian in w, so <v, drho/dw> = <drho/dd, J v>:
    # J v is a directional derivative of the board scoring (a central difference below), and
    # its derivative in M goes through M's one dense layer only (an exact tape there).
    dtype = next((d.dtype for d in drho if d is not None), tf.float32)
    terms = [tf.cast(tf.reduce_sum(a * tf.cast(b, a.dtype)), dtype)
             for a, b in zip(dval, dslope) if a is not None and b is not None]
    first = tf.add_n(terms) if terms else tf.constant(0.0, dtype)
    lr = tf.cast(lr, dtype)
    out = [None if d is None else -lr * first * d for d in drho]
    if scoring_gradient:  # else rho does not depend on the student's weights: no second term
        jv = tf.gather(_directional_derivative(lambda w: scoring(w, chained=False), weights,
                                               dval, model.compute_dtype), index)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as local:
                local.watch(chosen_diff)
                local_rho = tf.sigmoid(tf.cast(matching(chosen_diff[None]), dtype))[0]
            drho_dd = local.gradient(local_rho, chosen_diff)
            inner_product = tf.reduce_sum(tf.cast(drho_dd, dtype) * tf.cast(jv, dtype))
        second = outer.gradient(inner_product, matching.trainable_variables)
        # rho is a constant 0.5 when no entry had a finite score: then only drho/dM (zero)
        # counts
        found = tf.logical_and(tf.math.is_finite(local_rho),
                               tf.abs(local_rho - tf.cast(rho, dtype)) <= 1e-6)
        a_total = tf.cast(total_slope, dtype)
        out = [value if value is None or extra is None else
               value + tf.where(found, -lr * a_total * extra, tf.zeros_like(extra))
               for value, extra in zip(out, second)]
    return MetaUpdate(out, chain[0], index, rho)


def _directional_derivative(function, weights, direction, compute_dtype):
    """(f(w + e u) - f(w - e u)) / 2e along u = `direction`, a central difference.

    The step moves the weights by eps^(1/3) of their norm, eps being the compute dtype's
    resolution: the balance of truncation (e^2) and rounding (eps / e) errors. Zero where the
    direction is zero or missing.
    """
    eps = float(np.finfo(tf.as_dtype(compute_dtype).as_numpy_dtype).eps) \
        if tf.as_dtype(compute_dtype) != tf.bfloat16 else 2.0 ** -7
    pairs = [(w, tf.zeros_like(w) if u is None else tf.cast(u, w.dtype))
             for w, u in zip(weights, direction)]
    u_norm = tf.linalg.global_norm([u for _, u in pairs])
    w_norm = tf.linalg.global_norm([w for w, _ in pairs])
    step = eps ** (1.0 / 3.0) * tf.maximum(w_norm, 1.0) / tf.maximum(u_norm, 1e-30)
    plus = function([w + tf.cast(step, w.dtype) * u for w, u in pairs])
    minus = function([w - tf.cast(step, w.dtype) * u for w, u in pairs])
    value = (tf.cast(plus, tf.float64) - tf.cast(minus, tf.float64)) / (
        2.0 * tf.cast(step, tf.float64))
    return tf.where(u_norm > 0, value, tf.zeros_like(value))
