"""The Cream search: supernet training with a prioritized board.

The method and its defaults: docs/method.md, "Supernet training" and "The prioritized board and
the matching network".

One step: sample a path on the host (`Sampler`, a function of (seed, step), so every replica and
worker trains the same path and a resumed run samples what an uninterrupted one would); forward it
on the global batch split over the replicas; after the warm-up and once the board holds a path,
score the student against every board entry in one batched forward, pick a teacher
(`matching.select_teacher`), run it without gradient and use the Cream loss; apply gradients to
the path's weights only (`PathSGD`: ops off the path keep weights and momentum bit-identical);
then offer the path to the board with its batch accuracy. Every `meta_interval` steps the matching
network takes a meta-gradient step (`matching.meta_gradients`) with its own optimizer.

Everything that a resumed search needs (supernet, optimizer, board, matching network, meta
optimizer, step and the position in both input pipelines) is one `tf.train.Checkpoint` under
`workdir/checkpoints`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from cream_tf import internals
from cream_tf import matching as matching_lib
from cream_tf import safety
from cream_tf.cli import atomic_write as write_atomic  # noqa: F401  (public name)
from cream_tf.board import Board
from cream_tf.errors import InputError, is_count, require
from cream_tf.sampler import Sampler
from cream_tf.space import Space
from cream_tf.supernet import SuperNet, read_values, switch

__all__ = ["MIXED_PRECISION", "SearchConfig", "SearchResult", "LinearDecay", "PathSGD", "search",
           "write_atomic", "SearchState", "StepFunctions"]

_log = logging.getLogger(__name__)

# Dtype policies of the supernet; 'mixed_float16' adds dynamic loss scaling.
MIXED_PRECISION = (None, "mixed_bfloat16", "mixed_float16")


@keras.saving.register_keras_serializable(package="cream_tf")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base * max(0, 1 - step / total_steps): linear per step from `base` to 0.

    (The release's formula only gives this for base 1.0; this one holds for any base.)
    """

    def __init__(self, base: float, total_steps: int):
        if not base > 0:
            raise ValueError(f"base learning rate must be > 0, got {base!r}")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
        self.base = float(base)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        frac = tf.maximum(0.0, 1.0 - step / float(self.total_steps))
        return tf.constant(self.base, tf.float32) * frac

    def get_config(self):
        return {"base": self.base, "total_steps": self.total_steps}


def step_is_finite(loss, grads):
    """True on every replica iff loss and gradients are finite on all of them (replica context).

    Tests the global norm (one reduction), all-reduced so every replica decides the same way.
    """
    norm = tf.linalg.global_norm([g for g in grads if g is not None])
    bad = tf.cast(tf.logical_not(tf.math.is_finite(loss) & tf.math.is_finite(norm)), tf.float32)
    bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return tf.equal(bad, 0.0)


def poison_gradients(grads, finite):
    """Every gradient NaN unless `finite`: `PathSGD` then skips every variable of the step."""
    offset = tf.where(finite, 0.0, float("nan"))
    return [None if g is None else g + tf.cast(offset, g.dtype) for g in grads]


def _first_is_finite(gradient):
    return tf.math.is_finite(tf.reshape(gradient, [-1])[0])


def _on_path(layer: int, op: int, path, finite):
    """Whether branch (layer, op) is updated: on a finite step, always for the fixed parts
    (layer -1), else when it is the path's op at its layer."""
    return finite if layer < 0 else tf.logical_and(finite, tf.equal(path[layer], op))


class PathSGD(internals.UpdateAllVariablesHook, keras.optimizers.SGD):
    """SGD (Nesterov) that updates only the variables of the current path.

    Each variable's update is selected by its 'active' flag: fixed parts (stem, DS, 1x1 conv,
    head) are always active, a branch variable is active when its op is the path's op at its
    layer. Inactive variables keep weight and momentum bit-identical. The path is set
    with `set_path` before `apply` (it lives in a variable, so the flag is computed inside the
    traced update on every device).

    Weight decay is coupled L2 (added to the gradient, like torch SGD's weight_decay) and only on
    conv and dense kernels (variables of rank > 1), as the release does. Keras' own decoupled
    `weight_decay` would move every variable every step, so it is refused.

    Args:
      owners: callable variable -> object with `.layer` (-1 = fixed) and `.op` (e.g.
        `SuperNet.variable_owner`).
      num_layers: length of the path.
      l2: coupled weight decay of kernels.
      freeze_inactive: False gives the release's PyTorch-1.2 behaviour (zero gradients still
        move once-used ops by momentum and decay).
    """

    def __init__(self, owners, num_layers: int, learning_rate=0.01, momentum=0.9,
                 nesterov=True, l2=1e-4, freeze_inactive=True, name="path_sgd", **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError("PathSGD applies coupled L2 through l2=...; Keras' decoupled "
                             "weight_decay would also decay ops off the path")
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         name=name, **kwargs)
        self._owner_fn = owners
        self.num_layers = int(num_layers)
        self.l2 = float(l2)
        self.freeze_inactive = bool(freeze_inactive)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._owners = [(int(o.layer), int(o.op)) for o in (self._owner_fn(v) for v in variables)]
        self._decayed = [len(v.shape) > 1 for v in variables]
        self.path = self.add_variable((self.num_layers,), initializer="zeros", dtype="int32",
                                      name="path")

    def set_path(self, path):
        self.path.assign(tf.cast(path, tf.int32))

    def update_step(self, gradient, variable, learning_rate):
        layer, op = self._owners[internals.optimizer_variable_index(self, variable)]
        # A step with a non-finite loss or gradient anywhere arrives with every gradient NaN
        # (`poison_gradients`), so one element of any gradient is the step's global decision.
        active = _first_is_finite(gradient)
        if self.freeze_inactive:
            active = _on_path(layer, op, self._path_value(), active)
        # Keras SGD's arithmetic, then a select: no tf.cond per variable (hundreds of conds made
        # tracing the step take minutes), and a skipped variable and its momentum are written
        # back bit-identical.
        self._sgd(gradient, variable, learning_rate, active)

    def _path_value(self):
        return self.path.value if isinstance(self.path, keras.Variable) else self.path

    def _sgd(self, gradient, variable, learning_rate, active=None):
        """Keras SGD's arithmetic plus the coupled L2; with `active`, a select writes a skipped
        variable and its momentum back bit-identical."""
        index = internals.optimizer_variable_index(self, variable)
        m = self.momentums[index] if self.momentum else None
        new_w, new_m = self._sgd_values(gradient, variable, m, learning_rate,
                                        self._decayed[index])
        pick = (lambda new, old: new) if active is None else (
            lambda new, old: tf.where(active, new, old))
        if m is not None:
            self.assign(m, pick(new_m, m))
        self.assign(variable, pick(new_w, variable))

    def _sgd_values(self, gradient, weight, momentum, learning_rate, decayed):
        """(new weight, new momentum) of one variable: Keras SGD plus the coupled L2."""
        dtype = weight.dtype
        if self.l2 and decayed:
            gradient = gradient + tf.cast(self.l2, gradient.dtype) * tf.cast(weight,
                                                                             gradient.dtype)
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        if momentum is None:
            return weight - gradient * lr, None
        mu = tf.cast(self.momentum, dtype)
        new_m = momentum * mu - gradient * lr
        step = new_m * mu - gradient * lr if self.nesterov else new_m
        return weight + step, new_m

    def update_variables(self, grads, trainable_variables, learning_rate):
        """Only the path's variables are computed on: one tf.cond per branch (layer, op).

        Keras calls this once per step with every variable (`internals.UpdateAllVariablesHook`).
        The per-variable select of `update_step` computes the SGD arithmetic of every variable of
        the supernet each step (about 20 ops per variable, most of the step's time for small
        networks). Here the variables of each (layer, op) branch share one tf.cond (about 60
        conds for the release's space, not one per variable, which made tracing take minutes).
        On one device the conds update the variables in place. Under a strategy, the update
        goes through one function traced once (`_path_update`) that each replica runs on its
        own copies, and only the assignments are per device: tracing per-variable updates on
        every device grew the step's trace linearly with the replicas.
        """
        if not self.freeze_inactive or not tf.inside_function():
            return super().update_variables(grads, trainable_variables, learning_rate)
        if tf.distribute.has_strategy():
            context = tf.distribute.get_replica_context()
            if context is None:  # called in cross-replica context: Keras' own path
                return super().update_variables(grads, trainable_variables, learning_rate)
            return self._replica_update(context, grads, trainable_variables, learning_rate)
        pairs = list(zip(grads, trainable_variables))
        if not pairs:
            return
        finite = _first_is_finite(pairs[0][0])  # poisoned steps have every gradient NaN
        path = self._path_value()
        for (layer, op), members in self._groups(v for _, v in pairs).items():
            active = _on_path(layer, op, path, finite)

            def update(members=members):
                for k in members:
                    self._sgd(pairs[k][0], pairs[k][1], learning_rate)
                return tf.constant(True)

            tf.cond(active, update, lambda: tf.constant(False))

    def _groups(self, variables) -> dict:
        """(layer, op) -> positions in `variables` of that branch's variables."""
        groups = {}
        for k, v in enumerate(variables):
            owner = self._owners[internals.optimizer_variable_index(self, v)]
            groups.setdefault(owner, []).append(k)
        return groups

    def _replica_update(self, context, grads, variables, learning_rate):
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, list(grads))
        index = [internals.optimizer_variable_index(self, v) for v in variables]
        slots = [self.momentums[i] for i in index] if self.momentum else []
        weights, momenta = self._path_update(variables)(
            grads, read_values(variables), read_values(slots),
            tf.cast(learning_rate, tf.float32),
            tf.convert_to_tensor(self._path_value()))

        def assign(distribution, targets, values):
            for target, value in zip(targets, values):
                distribution.extended.update(target.value, lambda v, x: v.assign(x),
                                             args=(value,), group=False)

        context.merge_call(assign, args=(list(variables) + slots, list(weights) + list(momenta)))

    def _path_update(self, variables):
        """The pure update of `variables` (new weights and momenta from gradients, weights,
        momenta, learning rate and path), traced once outside any replica context."""
        key = tuple(internals.optimizer_variable_index(self, v) for v in variables)
        cache = self.__dict__.setdefault("_path_updates", {})
        if key in cache:
            return cache[key]
        decayed = [self._decayed[i] for i in key]
        groups = self._groups(variables)
        spec = lambda v: tf.TensorSpec(v.shape, v.dtype)  # noqa: E731
        slots = [spec(self.momentums[i]) for i in key] if self.momentum else []

        def update(grads, weights, momenta, learning_rate, path):
            finite = _first_is_finite(grads[0])  # poisoned steps have every gradient NaN
            new_w, new_m = list(weights), list(momenta)
            for (layer, op), members in groups.items():
                active = _on_path(layer, op, path, finite)

                def step(members=members):
                    out = [self._sgd_values(grads[k], weights[k],
                                            momenta[k] if momenta else None, learning_rate,
                                            decayed[k]) for k in members]
                    return [w for w, _ in out], [m for _, m in out if m is not None]

                def keep(members=members):
                    return ([weights[k] for k in members],
                            [momenta[k] for k in members] if momenta else [])

                ws, ms = tf.cond(active, step, keep)
                for j, k in enumerate(members):
                    new_w[k] = ws[j]
                    if momenta:
                        new_m[k] = ms[j]
            return new_w, new_m

        signature = ([spec(v) for v in variables], [spec(v) for v in variables], slots,
                     tf.TensorSpec([], tf.float32), tf.TensorSpec([self.num_layers], tf.int32))
        with tf.init_scope():
            cache[key] = tf.function(update, input_signature=signature).get_concrete_function()
        return cache[key]

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, l2=self.l2,
                      freeze_inactive=self.freeze_inactive)
        return config


@dataclasses.dataclass
class SearchConfig:
    """Settings of a search; defaults are the release's ImageNet search.

    Each setting's meaning and the release's value: docs/method.md, "Supernet training".

    Steps: `epochs * steps_per_epoch` (ImageNet: 1,281,167 / 1024 -> 1251 per epoch). Scale it down
    by setting `epochs`, `steps_per_epoch`, `warmup_epochs` and `batch_size`.
    """

    epochs: int = 120
    steps_per_epoch: int = 1251
    warmup_epochs: int = 20            # CE only; distillation starts after (release: 20 of 120)
    batch_size: int = 1024             # global, over all replicas
    learning_rate: float = 1.0         # linear per-step decay to 0, no warm-up
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4         # coupled L2 on conv/dense kernels
    freeze_inactive: bool = True       # ops off the path keep weights and momentum (docs/method.md)
    label_smoothing: float = 0.1
    dropout: float = 0.0
    prior: object = "release"          # 'uniform', 'release' or one weight per op
    skip_prob: float | None = None     # None: uniform share where SkipConnect is allowed
    macs_range: tuple | None = None    # (min, max) MACs of sampled paths
    board_size: int = 10
    board_images: int = 4
    board_gap: float = 5.0
    teacher: str = "meta"              # 'meta' or 'top1'
    meta_interval: int = 200
    meta_lr: float = 1e-4
    meta_slice: int = 4                # per replica: KD slice of the batch and held-out batch
    seed: int = 0
    checkpoint_interval: int = 1000    # steps
    keep_checkpoints: int = 3
    log_interval: int = 10             # TensorBoard scalars every this many steps
    verbose: int = 1                   # 0 silent, 1 progress bar
    jit_compile: bool = False          # XLA for the step; single-device only
    max_bad_steps: int = 20            # stop after this many non-finite steps in a row
    mixed_precision: str | None = None  # None, 'mixed_bfloat16' or 'mixed_float16' (loss scaling)
    trace_meta: bool | None = None     # None: traced iff the search makes >= 100 meta updates

    def __post_init__(self):
        def need(field, ok, requirement):
            require("SearchConfig", field, getattr(self, field), ok, requirement)

        for field in ("epochs", "steps_per_epoch", "batch_size", "board_size", "board_images",
                      "meta_interval", "meta_slice", "checkpoint_interval", "keep_checkpoints",
                      "log_interval", "max_bad_steps"):
            need(field, is_count(getattr(self, field)), "an int >= 1")
        need("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs,
             lambda name: f"in [0, {name('epochs')}={self.epochs}]")
        need("teacher", self.teacher in matching_lib.TEACHER_MODES,
             f"one of {', '.join(matching_lib.TEACHER_MODES)}")
        need("learning_rate", self.learning_rate > 0, "> 0")
        need("meta_lr", self.meta_lr > 0, "> 0")
        need("board_gap", self.board_gap >= 0, ">= 0")
        need("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)")
        need("dropout", 0 <= self.dropout < 1, "in [0, 1)")
        need("weight_decay", self.weight_decay >= 0, ">= 0")
        need("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        need("mixed_precision", self.mixed_precision in MIXED_PRECISION,
             f"one of {', '.join(map(str, MIXED_PRECISION))}")
        need("trace_meta", self.trace_meta in (None, True, False),
             "None (automatic), True or False")

    @property
    def meta_traced(self) -> bool:
        """Whether the meta update runs as a traced tf.function. Its forwards call the step's
        shared supernet forward, so the trace holds only the update's own ops and their wiring:
        a one-off cost, after which each update is far cheaper than an eager one (measured in
        benchmarks/README.md). Worth it for long searches, not for a few updates."""
        if self.trace_meta is not None:
            return bool(self.trace_meta)
        distill_steps = self.total_steps - self.warmup_steps
        return distill_steps // self.meta_interval >= 100

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prior"] = self.prior if isinstance(self.prior, str) else list(self.prior)
        d["macs_range"] = None if self.macs_range is None else list(self.macs_range)
        return d


@dataclasses.dataclass
class SearchResult:
    """What a search leaves: the trained supernet, its board, and where everything was written."""

    space: Space
    supernet: SuperNet
    board: Board
    matching: keras.Model
    sampler: Sampler
    workdir: str
    steps: int
    last_logs: dict
    traces: dict  # traces per step function in this call; 1 each means no retracing per path

    @property
    def entries(self) -> list:
        return self.board.entries()


# TensorBoard's scalar plugin tag, so tf.summary.write works without the tensorboard package
# (tf.summary.scalar needs it installed) and TensorBoard still plots the values as scalars.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))


def _scalar(tag: str, value, step: int):
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


# The search's figures in its progress bar and in TensorBoard (tags search/<name>), in Keras'
# conventions: accuracies are fractions of the batch (0.9512), as in the bar of retraining. rho
# and the board's figures appear from the first distilling step on: during the warm-up rho is 0
# and no teacher is picked from the board, so they would mean nothing.
_SHOWN = ("loss", "accuracy", "rho", "board_size", "board_best")


def _shown(logs: dict) -> list:
    """(name, value) pairs of `_SHOWN` for one step's logs: loss and accuracy, and from the first
    distilling step on rho and the board's size and best score (a fraction, as accuracy)."""
    return [(name, logs[name]) for name in (_SHOWN if logs["distill"] else _SHOWN[:2])]


def _worker_info(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                     "chief" not in resolver.cluster_spec().as_dict())
    return chief, task_id


def _check_dataset(ds, space: Space, what: str):
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"{what} must be a tf.data.Dataset of (image, label), got {type(ds)}")
    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"{what} must yield (image, label) pairs, unbatched; got {spec}")
    image, label = spec
    want = (space.resolution, space.resolution, 3)
    if image.shape.rank != 3 or tuple(image.shape) != want:
        raise ValueError(f"{what} images must be unbatched float32 {want} (the space's "
                         f"resolution); got shape {image.shape} (batch it inside search, not "
                         f"before)")
    if label.shape.rank != 0:
        raise ValueError(f"{what} labels must be scalar class ids, got shape {label.shape}")


def _signature(space: Space, config: SearchConfig) -> dict:
    signature = {"space": dataclasses.asdict(space), "seed": config.seed,
                 "batch_size": config.batch_size, "total_steps": config.total_steps,
                 "board_size": config.board_size, "board_images": config.board_images,
                 "teacher": config.teacher}
    if config.mixed_precision:  # only when set: workdirs of float32 searches keep resuming
        signature["mixed_precision"] = config.mixed_precision
    return json.loads(json.dumps(signature))  # the form it takes after a JSON round trip


def _check_signature(workdir: str, space: Space, config: SearchConfig) -> dict:
    """The search's signature; raises if `workdir` holds a search with another one."""
    signature = _signature(space, config)
    sig_path = os.path.join(workdir, "search.json")
    if os.path.exists(sig_path):
        with open(sig_path) as f:
            saved = json.load(f)
        old = saved.get("signature", {})
        diff = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
        if diff:
            raise InputError(f"workdir {workdir!r} holds a different search (differs in "
                             f"{', '.join(diff)}); use a new workdir or the same settings")
    return signature


def _latest_checkpoint(workdir: str):
    """The newest checkpoint prefix under `workdir`/checkpoints (verified readable), or None."""
    try:
        latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    except (tf.errors.OpError, ValueError) as e:
        raise safety.CheckpointError(
            f"{os.path.join(workdir, 'checkpoints', 'checkpoint')} cannot be read ({e}); delete it "
            f"to resume from the newest checkpoint files, or use a new workdir") from None
    if latest:
        safety.verify_checkpoint(latest)
    return latest


class UnfinishedSearch(ValueError):
    """`load_search` found no checkpoint, or one of a search that has steps left."""


@dataclasses.dataclass
class TrainedSearch:
    """A search's trained supernet and board as its last checkpoint holds them."""

    space: Space
    supernet: SuperNet
    board: Board
    steps: int        # steps the checkpoint has trained
    total_steps: int  # steps the search was configured for

    @property
    def finished(self) -> bool:
        return self.steps >= self.total_steps


def load_search(space: Space, workdir: str, config: SearchConfig | None = None,
                allow_unfinished: bool = False) -> TrainedSearch:
    """Reads the supernet and board of the search in `workdir` from its newest checkpoint.

    Nothing trains and no step is traced: this is what selection (and anything else that only
    needs a trained supernet) uses, so it never resumes a search by accident and its memory is
    the supernet's. A search with steps left raises `UnfinishedSearch` (saying how many) unless
    `allow_unfinished`; so does a workdir without a checkpoint.
    """
    config = config or SearchConfig()
    _check_signature(workdir, space, config)
    latest = _latest_checkpoint(workdir)
    if not latest:
        raise UnfinishedSearch(f"{workdir} holds no search checkpoint; run the search first")
    r = space.resolution
    supernet = SuperNet(space, dropout=config.dropout)
    board = Board(config.board_size, space.num_layers, config.board_images, (r, r, 3),
                  space.num_classes, gap=config.board_gap)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(supernet=supernet, board=board, step=step)
    try:  # the optimizer, matching network and input positions are the trainer's: not needed
        checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise safety.checkpoint_error(latest, e) from None
    result = TrainedSearch(space, supernet, board, int(step.numpy()), config.total_steps)
    if not result.finished and not allow_unfinished:
        raise UnfinishedSearch(
            f"the search in {workdir} has trained {result.steps} of {result.total_steps} steps "
            f"({result.total_steps - result.steps} left); rerun the search to finish it, or use "
            f"the supernet as it is")
    return result


def search(space: Space, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, workdir: str,
           config: SearchConfig | None = None, strategy=None, callback=None) -> SearchResult:
    """Trains a supernet of `space` with Cream's prioritized paths; resumes from `workdir`.

    Args:
      space: the search space.
      train_ds: unbatched, shuffled/augmented, repeating dataset of (float32 HWC image, int label).
        A resumed search continues its input pipeline where it stopped (the iterator is in the
        checkpoint), so seed its shuffles for exact reruns.
      val_ds: unbatched finite dataset held out from training; the meta-gradient reads it
        (repeated).
      workdir: where checkpoints, TensorBoard logs and board.json go. If it holds a checkpoint of
        the same search (same space, seed, batch, steps, board settings), the search resumes.
      config: `SearchConfig` (defaults: the release's ImageNet search).
      strategy: a tf.distribute strategy (default: the current one). All replicas train the same
        path; the global batch is split over them.
      callback: optional callable(step, logs) run on the host after every step (logs: loss,
        accuracy as a fraction of the batch, distill, board_size, macs, lr, path, board_changed,
        finite, bad_steps; from the first distilling step on also rho, teacher and board_best,
        the best board score as a fraction). It may raise to stop the search.

    Returns:
      `SearchResult` with the supernet, the board and the workdir.
    """
    config = config or SearchConfig()
    strategy = strategy or tf.distribute.get_strategy()
    _check_dataset(train_ds, space, "train_ds")
    _check_dataset(val_ds, space, "val_ds")
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise InputError(f"batch_size {config.batch_size} must divide evenly over {replicas} "
                         f"replicas")
    per_replica = config.batch_size // replicas
    if per_replica < max(config.board_images, config.meta_slice):
        raise InputError(f"each replica gets {per_replica} images per step; board_images "
                         f"({config.board_images}) and meta_slice ({config.meta_slice}) must not "
                         f"exceed it")
    if config.jit_compile and replicas > 1:
        raise InputError("jit_compile=True only works on a single device (XLA cannot compile a "
                         "step that applies gradients under a multi-replica strategy)")
    chief, task_id = _worker_info(strategy)

    signature = _check_signature(workdir, space, config)
    sig_path = os.path.join(workdir, "search.json")
    # Read (and check) the checkpoint before anything is built or written: a corrupted one
    # leaves the workdir exactly as it was.
    latest = _latest_checkpoint(workdir)

    sampler = Sampler(space, config.prior, config.skip_prob, config.macs_range, config.seed)
    state = SearchState(space, config, strategy)
    supernet, optimizer, board = state.supernet, state.optimizer, state.board
    matching, meta_optimizer, step_var = state.matching, state.meta_optimizer, state.step
    schedule = state.schedule

    train_iter = iter(train_ds.batch(config.batch_size, drop_remainder=True).prefetch(2))
    val_batch = config.meta_slice * replicas
    val_iter = iter(val_ds.repeat().batch(val_batch, drop_remainder=True).prefetch(1))
    checkpoint = tf.train.Checkpoint(supernet=supernet, optimizer=optimizer, board=board,
                                     matching=matching, meta_optimizer=meta_optimizer,
                                     step=step_var, train_data=train_iter, val_data=val_iter)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not chief:  # every worker saves (collectives); only the chief's copy is kept, outside
        ckpt_dir = tempfile.mkdtemp(prefix=f"cream_tf_worker{task_id}_")  # the workdir
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, config.keep_checkpoints)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise safety.checkpoint_error(latest, e) from None
        _log.info("resumed from %s at step %d", latest, int(step_var.numpy()))
        if int(step_var.numpy()) >= config.total_steps:
            # A finished search: nothing to train, and nothing in the workdir is rewritten (no
            # search.json, board.json or new, empty TensorBoard events file).
            if not chief:
                tf.io.gfile.rmtree(ckpt_dir)
            if config.verbose and chief:
                print(f"cream_tf.search: {workdir} holds a finished search "
                      f"({config.total_steps} steps); returning it.", flush=True)
            return SearchResult(space, supernet, board, matching, sampler, workdir,
                                config.total_steps, {}, {"step": 0})
    if chief:
        os.makedirs(workdir, exist_ok=True)
        write_atomic(sig_path, json.dumps({"signature": signature, "config": config.to_dict()},
                                          indent=2, default=str))

    steps = StepFunctions(state)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "logs")) if chief else None
    board_json = os.path.join(workdir, "board.json")
    if chief:
        write_atomic(board_json, board.to_json(space))

    start = int(step_var.numpy())
    total = config.total_steps
    progbar = keras.utils.Progbar(total, verbose=1 if (config.verbose and chief) else 0,
                                  stateful_metrics=_SHOWN)
    if start and progbar.verbose:
        progbar.update(start)
    logs = {}
    bad_in_row = bad_total = 0
    saved_at = start
    try:
        with safety.catch_signals():
            for step in range(start, total):
                path_np = sampler.sample(step)
                path = tf.constant(path_np, tf.int32)
                images, labels = next(train_iter)
                distill = step >= config.warmup_steps and int(board.size.numpy()) > 0
                if (distill and config.teacher == "meta" and step % config.meta_interval == 0):
                    val_images, val_labels = next(val_iter)
                    if not steps.meta(images, labels, val_images, val_labels, path):
                        _log.warning("step %d: non-finite meta-gradient; matching network not updated",
                                     step + 1)
                out = (steps.distill if distill else steps.warmup)(images, labels, path)
                finite = bool(out["finite"].numpy())
                correct = float(out["correct"].numpy())
                score = 100.0 * correct / config.batch_size  # the board's unit: percent
                macs = sampler.path_macs(path_np)
                changed = False
                if finite:
                    bad_in_row = 0
                    changed = board.update(path_np, score, macs, out["images"].numpy(),
                                           out["probs"].numpy())
                else:  # the step changed nothing (weights, slots, BN statistics); the board neither
                    bad_in_row += 1
                    bad_total += 1
                    _log.warning("step %d: non-finite loss or gradient on path %s; update skipped "
                                 "(%d in a row, %d in all)", step + 1, path_np.tolist(), bad_in_row,
                                 bad_total)
                    if bad_in_row >= config.max_bad_steps:
                        last = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
                        raise safety.TooManyBadSteps(
                            f"search stopped at step {step + 1}: {bad_in_row} steps in a row had a "
                            f"non-finite loss or gradient (last path {path_np.tolist()}, workdir "
                            f"{workdir}); last good checkpoint: {last or 'none yet'}. Check the data "
                            f"for NaN/Inf or lower the learning rate, then rerun to resume from it")
                step_var.assign(step + 1)
                logs = {"loss": float(out["loss"].numpy()),
                        "accuracy": correct / config.batch_size, "distill": distill,
                        "board_size": int(board.size.numpy()), "macs": macs,
                        "lr": float(schedule(step).numpy()), "path": path_np.tolist(),
                        "board_changed": bool(changed), "finite": finite, "bad_steps": bad_total}
                if distill:  # before, rho is 0 and no teacher is picked: nothing to report
                    logs.update(rho=float(out["rho"].numpy()),
                                teacher=int(out["teacher"].numpy()),
                                board_best=float(board.scores.numpy()[0]) / 100.0)
                if chief and changed:
                    write_atomic(board_json, board.to_json(space))
                if writer is not None and ((step + 1) % config.log_interval == 0 or step + 1 == total):
                    with writer.as_default(step=step + 1):
                        for key, value in _shown(logs):
                            _scalar(f"search/{key}", value, step + 1)
                        _scalar("search/macs", macs, step + 1)
                        _scalar("search/lr", logs["lr"], step + 1)
                progbar.update(step + 1, _shown(logs))
                # no periodic checkpoint inside a run of bad steps: the last one stays good
                if ((step + 1) % config.checkpoint_interval == 0 and finite) or step + 1 == total:
                    manager.save(checkpoint_number=step + 1)
                    saved_at = step + 1
                if callback is not None:
                    callback(step, logs)
                signum = safety.requested()
                if signum is not None:
                    raise _interrupted(signum, step + 1, saved_at, manager, workdir, strategy)
    finally:
        if writer is not None:
            writer.flush()
        if not chief and tf.io.gfile.exists(ckpt_dir):
            tf.io.gfile.rmtree(ckpt_dir)
    traces = {"step": steps.step.experimental_get_tracing_count()}
    return SearchResult(space, supernet, board, matching, sampler, workdir, total, logs, traces)


def _interrupted(signum, step, saved_at, manager, workdir, strategy):
    """Saves a checkpoint at `step` (single worker) and returns the `Interrupted` to raise."""
    name = safety.signal_name(signum)
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    multi_worker = len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1
    # Several workers: saving is collective and the others may not have the signal; keep the
    # last periodic checkpoint instead of risking a hang.
    if saved_at != step and not multi_worker:
        manager.save(checkpoint_number=step)  # atomic: written under temp names, then renamed
        saved_at = step
    where = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return safety.Interrupted(signum, f"search interrupted by {name} after step {step}; "
                                      f"checkpoint {where or 'none'} (step {saved_at}). "
                                      f"Run the same command again to resume")


def _assign(forward, state):
    forward.assign(state)
    return tf.constant(True)


class SearchState:
    """Everything a search trains and checkpoints, created under the strategy's scope.

    Public for the step benchmarks (benchmarks/harness.py), which time `search`'s own steps.
    """

    def __init__(self, space: Space, config: SearchConfig, strategy):
        self.space, self.config, self.strategy = space, config, strategy
        keras.utils.set_random_seed(config.seed)  # supernet and matching-network initialisation
        r = space.resolution
        with strategy.scope():
            # The supernet's layers take the dtype policy at construction; everything else
            # (board, matching network, losses) stays float32.
            previous = keras.mixed_precision.global_policy()
            if config.mixed_precision:
                keras.mixed_precision.set_global_policy(config.mixed_precision)
            try:
                self.supernet = SuperNet(space, dropout=config.dropout)
            finally:
                keras.mixed_precision.set_global_policy(previous)
            schedule = LinearDecay(config.learning_rate, config.total_steps)
            self.path_optimizer = PathSGD(self.supernet.variable_owner, space.num_layers,
                                          learning_rate=schedule, momentum=config.momentum,
                                          nesterov=config.nesterov, l2=config.weight_decay,
                                          freeze_inactive=config.freeze_inactive)
            self.optimizer = self.path_optimizer
            if config.mixed_precision == "mixed_float16":
                # dynamic loss scale; a non-finite step is skipped and the scale halved
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.path_optimizer)
            self.schedule = schedule
            self.optimizer.build(self.supernet.trainable_variables)
            self.board = Board(config.board_size, space.num_layers, config.board_images,
                               (r, r, 3), space.num_classes, gap=config.board_gap)
            self.matching = matching_lib.MatchingNetwork(config.board_images, space.num_classes,
                                                         seed=config.seed, dtype="float32")
            self.meta_optimizer = keras.optimizers.SGD(config.meta_lr, name="meta_sgd")
            self.meta_optimizer.build(self.matching.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")


class StepFunctions:
    """The traced replica steps. One trace each serves every path (the path is an int32 tensor).

    `step` (warm-up and distillation) and `meta_step` are the functions `warmup`, `distill` and
    `meta` run; public, like `SearchState`, for the step benchmarks.
    """

    def __init__(self, state: SearchState):
        self.space, self.config, self.strategy = state.space, state.config, state.strategy
        self.supernet, self.optimizer, self.board = state.supernet, state.optimizer, state.board
        self.path_optimizer = state.path_optimizer
        self.matching, self.meta_optimizer = state.matching, state.meta_optimizer
        config, strategy = self.config, self.strategy
        self.replicas = strategy.num_replicas_in_sync
        self.per_replica = config.batch_size // self.replicas
        jit = bool(config.jit_compile)
        # the supernet's forward, traced once and shared by every call and replica of the steps
        self.forward = self.supernet.path_forward(training=True)
        self.forward.concrete  # traced here, eagerly: once for every replica and call
        # One traced step serves warm-up and distillation (a bool tensor picks, via tf.cond): the
        # graph holds every branch of every layer, so each trace costs a lot of start-up time.
        self.step = tf.function(self._train, jit_compile=jit)
        # The meta update: eager for short searches (eager tf.switch_case runs only the taken
        # branch, no trace), traced for long ones (SearchConfig.meta_traced).
        self.meta_step = (tf.function(self._meta_replicas, jit_compile=jit)
                          if config.meta_traced else self._meta_replicas)

    @staticmethod
    def _local(tensor, size):
        """This replica's slice of a global batch (replicas take consecutive blocks)."""
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        return tensor[rid * size:(rid + 1) * size]

    def warmup(self, images, labels, path):
        return self.step(images, labels, path, tf.constant(False))

    def distill(self, images, labels, path):
        return self.step(images, labels, path, tf.constant(True))

    def _train(self, images, labels, path, distill):
        cfg, net, board = self.config, self.supernet, self.board
        n = cfg.board_images
        global_batch = cfg.batch_size
        num_classes = self.space.num_classes

        forward = self.forward

        def replica_fn(images, labels):
            # One read of the variables serves every forward of the step; the BatchNorm
            # statistics flow from forward to forward (board scoring, teacher, student, as the
            # release runs them) and are written once, at the end, if the step was finite.
            weights, state = forward.values()
            x = self._local(images, self.per_replica)
            y = tf.cast(self._local(labels, self.per_replica), tf.int32)
            ctx = tf.distribute.get_replica_context()

            def score():
                new_state = []

                def student(t):
                    logits, after = forward(weights, state, t, path)
                    new_state.append(after)
                    return logits

                probs = matching_lib.student_board_probs(student, board.images, board.size)
                return tf.cast(probs, tf.float32), new_state[0]

            def no_score():
                return tf.zeros(board.probs.shape, tf.float32), state

            student_probs, scored = switch(tf.cast(distill, tf.int32), [no_score, score])
            # identical on every replica already; the mean makes it bit-identical, so all
            # replicas pick the same teacher (outside the switch: a collective must not be skipped)
            student_probs = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, student_probs)

            def teach():
                index, rho, _ = matching_lib.select_teacher(
                    cfg.teacher, student_probs, board.probs, board.size, self.matching)
                teacher_path = tf.gather(tf.convert_to_tensor(board.paths), index)
                logits, after = forward(weights, scored, x, teacher_path)
                return (tf.cast(index, tf.int32), tf.cast(rho, tf.float32),
                        tf.cast(logits, tf.float32), after)

            def no_teacher():  # rho = 0 makes the loss exactly the warm-up CE
                return (tf.constant(-1, tf.int32), tf.constant(0.0),
                        tf.zeros([tf.shape(x)[0], num_classes], tf.float32), scored)

            index, rho, teacher_logits, taught = switch(tf.cast(distill, tf.int32),
                                                        [no_teacher, teach])
            teacher_logits = tf.stop_gradient(teacher_logits)
            rho = tf.stop_gradient(rho)
            with tf.GradientTape() as tape:
                tape.watch(weights)
                logits, new_state = forward(weights, taught, x, path)
                loss = matching_lib.cream_loss(y, logits, teacher_logits, rho,
                                               cfg.label_smoothing, global_batch)
                # identity unless a LossScaleOptimizer (mixed_float16) scales it; apply unscales
                scaled = self.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, weights)
            finite = step_is_finite(loss, grads)
            self.optimizer.apply(poison_gradients(grads, finite), net.trainable_variables)
            # a bad step leaves the BatchNorm statistics as they were, like everything else
            tf.cond(finite, lambda: _assign(forward, new_state), lambda: tf.constant(False))
            correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.int32))
            probs = tf.nn.softmax(tf.cast(logits[:n], tf.float32))
            return loss, correct, x[:n], probs, rho, index, tf.cast(finite, tf.int32)

        self.path_optimizer.set_path(path)
        loss, correct, head, probs, rho, index, finite = self.strategy.run(
            replica_fn, args=(images, labels))
        reduce = self.strategy.reduce
        return {"finite": self.strategy.experimental_local_results(finite)[0],
                "loss": reduce("SUM", loss, axis=None),
                "correct": reduce("SUM", correct, axis=None),
                "images": self.strategy.gather(head, axis=0)[:n],
                "probs": self.strategy.gather(probs, axis=0)[:n],
                "rho": reduce("MEAN", rho, axis=None),
                "teacher": self.strategy.experimental_local_results(index)[0]}

    def meta(self, images, labels, val_images, val_labels, path) -> bool:
        """One meta-gradient update of the matching network; True if it was applied."""
        return bool(self.meta_step(images, labels, val_images, val_labels, path).numpy())

    def _meta_replicas(self, images, labels, val_images, val_labels, path):
        """The replica work of `meta`; returns 1 (int32) if the update was applied."""
        cfg, board = self.config, self.board
        m = cfg.meta_slice

        def replica_fn(images, labels, val_images, val_labels):
            x = self._local(images, self.per_replica)[:m]
            y = tf.cast(self._local(labels, self.per_replica)[:m], tf.int32)
            vx = self._local(val_images, m)
            vy = tf.cast(self._local(val_labels, m), tf.int32)
            lr = self.optimizer.learning_rate
            grads = matching_lib.meta_gradients(
                self.supernet, path, self.matching, board.images, board.probs, board.size,
                x, y, vx, vy, lr, cfg.label_smoothing, m * self.replicas,
                board_paths=board.paths, forward=self.forward)
            finite = step_is_finite(tf.constant(0.0), grads)  # the same on every replica
            # M's optimizer is plain SGD: a zero gradient leaves it bit-identical
            grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
            self.meta_optimizer.apply(grads, self.matching.trainable_variables)
            return tf.cast(finite, tf.int32)

        finite = self.strategy.run(replica_fn, args=(images, labels, val_images, val_labels))
        return self.strategy.experimental_local_results(finite)[0]


# The names before issue 16 made them public; tests still use them.
_SearchState = SearchState
_StepFunctions = StepFunctions
