"""The search's optimizer: `PathSGD`, which updates only the current path's weights, and its
learning rate `LinearDecay`, read at the search's step (`StepRate`).

A step with a non-finite loss or gradient on any replica is skipped as a whole: the step decides
(`step_is_finite`) and hands `PathSGD` gradients that are all NaN (`poison_gradients`), which
`PathSGD` reads as "change nothing", weights and momenta bit-identical.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from cream_tf import internals
from cream_tf.supernet import read_values

__all__ = ["LinearDecay", "PathSGD", "StepRate", "poison_gradients", "step_is_finite"]


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


class StepRate:
    """A learning rate read from the search's step counter instead of the optimizer's own.

    The optimizers of a search apply a different number of times per step: the student's takes
    an extra step at each meta update, M's applies only while distilling and twice at a meta
    update. The release's rates follow the training step (its scheduler ticks once per batch),
    so the schedule is read at the search's `step` variable, which also makes a resumed search
    use the same rates.
    """

    def __init__(self, schedule, step):
        self.schedule, self.step = schedule, step

    def __call__(self):
        return self.schedule(self.step)


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
