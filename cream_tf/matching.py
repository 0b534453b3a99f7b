"""Teacher selection, the Cream loss and the matching network's meta-gradient.

The method: docs/method.md, "The prioritized board and the matching network"; where this differs
from the authors' release: docs/method.md, "Where cream_tf departs from the release".

* `MatchingNetwork` M scores a board entry from the difference between the student's softmax on the
  entry's stored images and the entry's stored softmax (release: one dense layer, n*classes -> 1).
* `select_teacher` picks the teacher among the valid board entries: 'top1' (the best entry,
  rho = 0.5) or 'meta' (the entry M scores highest, rho = sigmoid of *that* entry's score).
* `cream_loss` is the distillation objective (rho * KD + (2 - rho) * CE) / 2, reduced for
  tf.distribute.
* `meta_gradients` trains M: the gradient of the held-out cross-entropy after one simulated SGD
  step of the student, through *all* the student's trainable weights (Keras `stateless_call`).

Everything here is traceable: it runs inside `tf.function` and per replica inside `strategy.run`.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

__all__ = ["MatchingNetwork", "select_teacher", "student_board_probs", "cream_loss",
           "meta_gradients", "TEACHER_MODES", "INNER_LOSSES"]

TEACHER_MODES = ("top1", "meta")
INNER_LOSSES = ("kd", "cream")


@keras.saving.register_keras_serializable(package="cream_tf")
class MatchingNetwork(keras.Model):
    """M of Cream: one Dense(1) on the flattened [n, classes] softmax difference of an entry.

    Initialised with kernel and bias uniform in +-1/sqrt(n * classes), the scale of a default
    `torch.nn.Linear`. The release re-initialises its M (kernel uniform in [-1, 1], bias 0): a
    current difference, docs/method.md, "Where cream_tf departs from the release". Built on
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
        features = num_images * num_classes
        bound = 1.0 / math.sqrt(features)
        self.dense = keras.layers.Dense(
            1, name="dense", dtype=self.dtype_policy,
            kernel_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed),
            bias_initializer=keras.initializers.RandomUniform(
                -bound, bound, seed=None if seed is None else seed + 1))
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
      float32 probabilities [K, n, classes]. The forward always has the static shape
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
    probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
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
      to M's weights (the meta-gradient needs it); in the training step use it through
      `cream_loss`, which stops that gradient.

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
    without gradient) and at rho (M learns only by `meta_gradients`; without the stop, the
    training step would also move the student's weights through the scoring forward and M). The
    release does not stop it there: a current difference, docs/method.md, "Where cream_tf
    departs from the release".
    """
    logits = _float(student_logits)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    ce = _smoothed_ce(tf.convert_to_tensor(labels), log_probs, label_smoothing)
    if teacher_logits is None:
        per_example = ce
    else:
        r = tf.cast(tf.stop_gradient(rho), logits.dtype)
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


def meta_gradients(model, path, matching, board_images, board_probs, board_size,
                   x_kd, y_kd, x_val, y_val, lr, label_smoothing, global_batch_size,
                   *, board_paths=None, inner_loss: str = "kd", training: bool = True,
                   forward=None):
    """Gradient of M's meta-objective.

    The method: docs/method.md, "The prioritized board and the matching network".

    Unlike the release, where it reaches M through the stem conv only, the gradient flows
    through every weight of the simulated step (docs/method.md, "Where cream_tf departs from
    the release").

    1. The student (`path`) scores every board entry in one batched forward
       (`student_board_probs`); `select_teacher('meta', ...)` picks the teacher and rho.
    2. The teacher path (`board_paths[index]`) runs on `x_kd` without gradient.
    3. Inner loss on (x_kd, y_kd): 'kd' (default, the release) = rho * KD; 'cream' = the training
       loss (rho * KD + (2 - rho) * CE) / 2. Reduced with compute_average_loss.
    4. Simulated SGD step over ALL the model's trainable weights: w' = w - lr * dL/dw. Its
       derivative with respect to rho is exact and first-order (see the code), so no
       second-order gradient is taken. Under a tf.distribute strategy with several replicas the inner
       gradient is all-reduced (SUM), so every replica steps to the same w' as one device on the
       global batch would; summing the returned per-replica gradients (as the optimizer's
       all-reduce does) then gives the exact global meta-gradient.
    5. Cross-entropy (label smoothing) of the student with w' on (x_val, y_val), reduced with
       compute_average_loss; returns its gradient w.r.t. `matching.trainable_variables`.

    All forwards are stateless (`forward`, by default `model.stateless_call`): the model's
    variables (BatchNorm statistics included) are left untouched.

    Under a multi-replica strategy the all-reduce is a synchronization point: call this (and the
    M optimizer's apply_gradients) from a replica function of its own, chosen on the host every
    N steps, not inside a `tf.cond` of the training step (tf.distribute refuses that).

    Args:
      model: a built keras.Model called as model(x, path=path, training=...).
      path: the student path (int32 [L] tensor).
      matching: the `MatchingNetwork`.
      board_images, board_probs, board_size: `board.images`, `board.probs`, `board.size`.
      x_kd, y_kd: the KD slice; x_val, y_val: the held-out slice (int labels or distributions).
      lr: the student's current learning rate (scalar).
      label_smoothing: of every CE here (the training loss's, release 0.1).
      global_batch_size: examples in the KD and in the validation slice over all replicas: one
        int for both, or a pair (kd, val).
      board_paths: `board.paths` [K, L], required: the teacher path comes from it.
      inner_loss: 'kd' or 'cream' (see 3).
      training: mode of every forward (release: training mode).
      forward: optional stateless forward of `model`, callable(weights, state, images, path) ->
        (logits, new_state) such as a `supernet.PathForward` of mode `training`; the training
        step's own, so the update reuses its trace.

    Returns:
      list of gradients, one per `matching.trainable_variables`.
    """
    if board_paths is None:
        raise ValueError("meta_gradients needs board_paths=board.paths: the chosen teacher's path "
                         "is read from it")
    if inner_loss not in INNER_LOSSES:
        raise ValueError(f"unknown inner_loss {inner_loss!r}; valid: {', '.join(INNER_LOSSES)}")
    gb_kd, gb_val = _batch_sizes(global_batch_size)
    path = tf.convert_to_tensor(path)
    variables = model.trainable_variables
    weights = [tf.identity(v.value) for v in variables]
    state = [tf.identity(v.value) for v in model.non_trainable_variables]

    def forward(w, x, p, call=forward):
        if call is None:
            logits, _ = model.stateless_call(w, state, x, path=p, training=training)
        else:
            logits, _ = call(w, state, x, p)
        return tf.convert_to_tensor(logits)

    # 1-2: teacher choice and soft targets; constants with respect to M's weights except rho.
    student_probs = tf.stop_gradient(
        student_board_probs(lambda x: forward(weights, x, path), board_images, board_size))
    with tf.GradientTape() as rho_tape:  # watches M's variables only (the model runs stateless)
        index, rho, _ = select_teacher("meta", student_probs, board_probs, board_size, matching)
    drho = rho_tape.gradient(rho, matching.trainable_variables)
    teacher_path = tf.cast(tf.gather(tf.convert_to_tensor(board_paths), index), path.dtype)
    teacher_logits = tf.stop_gradient(forward(weights, x_kd, teacher_path))
    # 3-4: the inner loss is linear in rho, L = rho * A + B ('kd': A = KD, B = 0; 'cream':
    # A = (KD - CE) / 2, B = CE), so the simulated step w' = w - lr * dL/dw moves with rho along
    # dw'/drho = -lr * dA/dw, and the chain rule gives the exact meta-gradient from first-order
    # gradients only: dJ/dM = -lr * <dJ/dw', dA/dw> * drho/dM. No second-order tape: the update
    # costs two backward passes instead of a backward through a backward.
    with tf.GradientTape(persistent=inner_loss != "kd") as inner:
        inner.watch(weights)
        logits = _float(forward(weights, x_kd, path))
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
    r = tf.stop_gradient(tf.cast(rho, logits.dtype))
    dslope = inner.gradient(slope, weights)  # dA/dw = d(dL/dw)/drho
    if offset is None:
        grads = [None if g is None else r * g for g in dslope]
    else:
        doffset = inner.gradient(offset, weights)
        grads = [_add(None if a is None else r * a, b) for a, b in zip(dslope, doffset)]
    used = [i for i, g in enumerate(grads) if g is not None]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1 and used:
        # every replica steps to the same w' as one device on the global batch would
        both = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  [grads[i] for i in used] + [dslope[i] for i in used])
        for k, i in enumerate(used):
            grads[i], dslope[i] = both[k], both[len(used) + k]
    stepped = [w if g is None else w - tf.cast(lr, w.dtype) * g for w, g in zip(weights, grads)]
    # 5: held-out loss with the stepped weights, and its gradient at w'.
    with tf.GradientTape() as val_tape:
        val_tape.watch(stepped)
        val_logits = _float(forward(stepped, x_val, path))
        val_ce = _smoothed_ce(tf.convert_to_tensor(y_val), tf.nn.log_softmax(val_logits, -1),
                              label_smoothing)
        val_loss = tf.nn.compute_average_loss(val_ce, global_batch_size=gb_val)
    dval = val_tape.gradient(val_loss, stepped)
    dtype = next((d.dtype for d in drho if d is not None), tf.float32)
    terms = [tf.cast(tf.reduce_sum(a * tf.cast(b, a.dtype)), dtype)
             for a, b in zip(dval, dslope) if a is not None and b is not None]
    scale = -tf.cast(lr, dtype) * (tf.add_n(terms) if terms else tf.constant(0.0, dtype))
    return [None if d is None else scale * d for d in drho]
