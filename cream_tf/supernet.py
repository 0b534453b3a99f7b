"""The Cream supernet: every op of every searchable layer in one Keras model, one path at a time.

Each searchable position of a `Space` becomes a `ChoiceLayer` that owns one small functional model
per allowed op (built with `blocks.op_block`, so it holds exactly the layers a child network would
hold) and runs the chosen one with `tf.switch_case` on one element of an int32 path tensor. Because
the path is a tensor, one traced graph serves every path.

Branch layers are named `{choice}_o{op}_{part}` (e.g. `stage2_layer3_o5_expand_conv`), where
`{part}` is exactly the suffix `child.build` uses after its block prefix
(`stage2_block2_expand_conv`); the stem, DS, 1x1 conv and head carry the child's own names. So a
child takes a path's weights by layer name (`inherit_weights`).
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from cream_tf import arch as arch_lib
from cream_tf import blocks
from cream_tf import child as child_lib
from cream_tf import internals
from cream_tf.space import Space

__all__ = ["ChoiceLayer", "SuperNet", "PathForward", "inherit_weights", "path_tensor",
           "VariableOwner", "choice_prefix", "nested_path", "read_values"]


def switch(index, branch_fns):
    """`tf.switch_case` that, inside a traced function, stays one `Case` op running one branch.

    By default TensorFlow lowers a traced `Case` into Switch/Merge nodes: every node of every
    untaken branch, forward and backward, then stays in the step's graph and is processed
    (as dead) on every step. For a supernet, where each layer has six branches and one runs,
    that executor work dominated the step at small resolutions. Keeping the `Case` op
    (`lower_using_switch_merge=False`) runs the taken branch as a function call; the gradient
    `Case` keeps the setting. Measured in benchmarks/README.md. Eagerly, and under XLA (which
    compiles a Case to one conditional either way), it is `tf.switch_case`. No public API keeps
    the op: see `internals.unlowered_switch_case`.
    """
    if tf.executing_eagerly():
        return tf.switch_case(index, branch_fns)
    return internals.unlowered_switch_case(index, branch_fns)


def choice_prefix(stage: int, index: int) -> str:
    """Name prefix of searchable layer `index` (0-based) of stage `stage` (0-based)."""
    return f"stage{stage + 1}_layer{index + 1}"


def _branch_prefix(stage: int, index: int, op_index: int) -> str:
    return f"{choice_prefix(stage, index)}_o{op_index}"


class SharedSwitches:
    """The traced pure switches (`ChoiceLayer._pure_switch`) of a supernet's layers, by
    structure (ops, stride, training, and the shapes and dtypes of their arguments). A plain
    object, so Keras does not copy it into a tracked dict per layer."""

    def __init__(self):
        self.functions = {}


class ChoiceLayer(keras.layers.Layer):
    """One searchable position: a branch per allowed op, `tf.switch_case` picks one.

    Branch `i` is op index `i` of the space. Op indices the layer does not allow (only SkipConnect,
    at the first layer of a stage, and it is the last index) get no branch; callers validate paths
    before they reach the graph (`SuperNet.path_tensor`).
    """

    def __init__(self, space: Space, layer_index: int, **kwargs):
        layer = space.layers[layer_index]
        super().__init__(name=choice_prefix(layer.stage, layer.index), **kwargs)
        self.space = space
        self.layer_index = layer_index
        self.spec = layer
        shape = (layer.in_size, layer.in_size, layer.in_channels)
        self.op_indices = tuple(sorted(layer.choices))
        if self.op_indices != tuple(range(len(self.op_indices))):
            raise ValueError(f"{self.name}: op indices {self.op_indices} are not 0..n-1; "
                             f"SkipConnect must be the last op of the space")
        self.shared_switches = SharedSwitches()
        self.branches = []
        for o in self.op_indices:
            op = space.ops[o]
            prefix = _branch_prefix(layer.stage, layer.index, o)
            if op.kind == "skip":
                self.branches.append(None)
                continue
            inputs = keras.Input(shape, name=f"{prefix}_input")
            outputs = blocks.op_block(inputs, op, layer.out_channels, layer.stride, prefix)
            self.branches.append(keras.Model(inputs, outputs, name=prefix))
        _track_for_checkpoints(self, ((f"o{o}", b) for o, b in zip(self.op_indices, self.branches)
                                      if b is not None))

    def build(self, input_shape):
        # Branch models are built at construction (functional); nothing to create here.
        self.built = True

    def call(self, x, index=None, training=None, scope=None):
        """`scope`: the `keras.StatelessScope` of a stateless forward (`PathForward`), or None."""
        if index is None:
            raise ValueError(f"{self.name}: pass the op index as index=<int32 scalar tensor>")
        if scope is None:
            def run(branch):
                if branch is None:
                    return lambda: tf.identity(x)
                return lambda: branch(x, training=training)

            return switch(index, [run(b) for b in self.branches])
        weights = [scope.get_current_value(v) for v in self._weights]
        state = [scope.get_current_value(v) for v in self._statistics]
        y, new_state = self._pure_switch(training, weights, state, x)(weights, state, x, index)
        for v, value in zip(self._statistics, new_state):
            scope.add_update((v, value))
        return y

    def _stateless_switch(self, weights, state, x, index, training):
        """(weights, BN state, x, op index) -> (y, new BN state): the switch, reading and
        writing no variable. A branch's BatchNorm updates are tensors of the branch's own graph,
        so each branch returns the new values of every statistic of the layer (its own updated,
        the others unchanged)."""
        mapping = list(zip(self._weights, weights)) + list(zip(self._statistics, state))
        with keras.StatelessScope(mapping, initialize_variables=False) as scope:
            def run(branch):
                def fn():
                    y = tf.identity(x) if branch is None else branch(x, training=training)
                    after = [scope.get_current_value(v) for v in self._statistics]
                    for v, value in zip(self._statistics, state):  # next branch: same start
                        scope.add_update((v, value))
                    return y, after
                return fn

            return switch(index, [run(b) for b in self.branches])

    def _pure_switch(self, training, weights, state, x):
        """`_stateless_switch` traced once for every layer with the same structure.

        The layers of a stage after its first have the same input and output shapes and ops, so
        their switches differ only in the weights they are given: one trace, and one gradient,
        serves them all (10 traces for the 30 layers of the Table 1 space at depth 6, where
        tracing the switches and their gradients is most of a step's first trace). Called from
        a traced forward, the calls are inlined, so the step runs the same ops as with a trace
        per layer. The key holds the arguments' shapes and dtypes (x is bfloat16 or float16
        under a mixed policy) besides the ops and stride, which with them fix the structure.
        """
        spec = lambda t: tf.TensorSpec(t.shape, t.dtype)  # noqa: E731
        signature = ([spec(t) for t in weights], [spec(t) for t in state],
                     tf.TensorSpec([None] + list(x.shape[1:]), x.dtype), tf.TensorSpec([], tf.int32))
        key = (tuple(self.space.ops[o] for o in self.op_indices), self.spec.stride,
               bool(training), repr(signature))
        functions = self.shared_switches.functions
        if key not in functions:
            pure = lambda w, st, x, i: self._stateless_switch(w, st, x, i, training)  # noqa: E731
            with tf.init_scope():
                functions[key] = tf.function(pure, input_signature=signature
                                             ).get_concrete_function()
        return functions[key]

    @property
    def _weights(self):
        return [v for b in self.branches if b is not None for v in b.trainable_variables]

    @property
    def _statistics(self):
        return [v for b in self.branches if b is not None for v in b.non_trainable_variables]

    def compute_output_shape(self, input_shape):
        s = self.spec
        out = -(-s.in_size // s.stride)
        return (input_shape[0], out, out, s.out_channels)


def _track_for_checkpoints(owner, named_layers):
    """Makes layers held in a list attribute checkpoint dependencies of `owner`.

    Keras 3 tracks a list attribute of layers for its own weights (`owner.weights`, `.weights.h5`)
    but as a `TrackedList`, which is no `tf.train.Checkpoint` dependency: without this,
    `tf.train.Checkpoint(supernet=...)` silently skips the branches. Their trainable weights
    still reach a search checkpoint through the optimizer, but their BatchNorm moving statistics
    did not, so a resumed search continued with initial statistics for every branch trained
    before the checkpoint.
    """
    for name, layer in named_layers:
        internals.track_checkpoint_dependency(owner, layer, name)


def _fixed_models(space: Space, dropout: float):
    r = space.resolution
    inputs = keras.Input((r, r, 3), name="image")
    x = blocks.stem(inputs, space.stem_channels)
    x = blocks.ds_block(x, space.ds_channels, space.ds_stride)
    stem = keras.Model(inputs, x, name="stem_ds")
    f = space.final_size
    tail_in = keras.Input((f, f, space.stage_channels[-1]), name="features")
    y = blocks.final_conv(tail_in, space.final_channels)
    y = blocks.head(y, space.head_channels, space.num_classes, dropout=dropout)
    tail = keras.Model(tail_in, y, name="final_head")
    return stem, tail


@dataclasses.dataclass(frozen=True)
class VariableOwner:
    """Where a supernet variable lives: searchable layer `layer` (-1 = fixed part) and op `op`."""

    layer: int
    op: int


class SuperNet(keras.Model):
    """All paths of a space in one model: `supernet(images, path=int32[L], training=...)` -> logits.

    Args:
      space: the search space (its resolution fixes the input size).
      dropout: rate of the dropout before the classifier (the release searches without).

    Build happens in the constructor (every branch, eagerly), so the optimizer, checkpoints and the
    variable order never depend on which branch a trace reached first. Create it inside
    `strategy.scope()` for distributed training.
    """

    def __init__(self, space: Space, dropout: float = 0.0, name: str = "cream_supernet", **kw):
        super().__init__(name=name, **kw)
        self.space = space
        self.dropout = dropout
        self.stem_ds, self.final_head = _fixed_models(space, dropout)
        self.choices = [ChoiceLayer(space, l) for l in range(space.num_layers)]
        _track_for_checkpoints(self, ((c.name, c) for c in self.choices))
        shared = SharedSwitches()
        for choice in self.choices:
            choice.shared_switches = shared
        # Every branch is a functional model, built (variables created) when it was made; mark the
        # wrappers built so no call (and no trace of every branch) is needed here.
        for choice in self.choices:
            choice.built = True
        self.built = True
        self._owners = self._variable_owners()

    def call(self, images, path=None, training=None, scope=None):
        if path is None:
            raise ValueError("SuperNet needs the path: supernet(images, path=int32 tensor of "
                             f"{self.space.num_layers} op indices)")
        path = tf.convert_to_tensor(path, tf.int32)
        x = self.stem_ds(images, training=training)
        for l, choice in enumerate(self.choices):
            x = choice(x, index=path[l], training=training, scope=scope)
        return self.final_head(x, training=training)

    def path_forward(self, training: bool = True) -> "PathForward":
        """The shared traced forward of this supernet (one per mode, made on first use)."""
        cache = self.__dict__.setdefault("_path_forwards", {})
        if bool(training) not in cache:
            cache[bool(training)] = PathForward(self, training=training)
        return cache[bool(training)]

    # -- paths -----------------------------------------------------------------------------
    def path_tensor(self, path) -> tf.Tensor:
        """Validates a path (per-stage lists or flat) and returns it as the int32 [L] tensor."""
        return path_tensor(path, self.space)

    # -- variable ownership -----------------------------------------------------------------
    def _variable_owners(self) -> dict:
        owners = {}
        for v in self.stem_ds.weights + self.final_head.weights:
            owners[id(v)] = VariableOwner(-1, -1)
        for l, choice in enumerate(self.choices):
            for o, branch in zip(choice.op_indices, choice.branches):
                if branch is not None:
                    for v in branch.weights:
                        owners[id(v)] = VariableOwner(l, o)
        missing = [v.path for v in self.weights if id(v) not in owners]
        if missing:
            raise RuntimeError(f"supernet variables without an owner: {missing}")
        return owners

    def variable_owner(self, variable) -> VariableOwner:
        """(layer, op) of a supernet variable; layer -1 means a fixed part (always trained)."""
        try:
            return self._owners[id(variable)]
        except KeyError:
            raise KeyError(f"{getattr(variable, 'path', variable)!r} is not a variable of "
                           f"{self.name}") from None

    def variable_owners(self, variables=None) -> list:
        """Owners of `variables` (default: trainable variables), in order, for the optimizer."""
        variables = self.trainable_variables if variables is None else variables
        return [self.variable_owner(v) for v in variables]

    def path_layers(self, path) -> list:
        """The Keras layers a path uses: the fixed parts and the chosen (non-skip) branches."""
        flat = arch_lib.flat_path(arch_lib.validate_path(nested_path(path, self.space), self.space))
        result = [self.stem_ds, self.final_head]
        for choice, o in zip(self.choices, flat):
            branch = choice.branches[o]
            if branch is not None:
                result.append(branch)
        return result


class PathForward:
    """The supernet's forward as one pure traced function that every call of a step shares.

    `forward(weights, state, images, path) -> (logits, new_state)`: `weights` and `state` are the
    values of `supernet.trainable_variables` and `.non_trainable_variables` (`values()`), images
    have any batch size. Nothing is read from or written to a variable inside, so the function is
    traced once for every input shape, path, replica and caller: a training step that forwards
    the student, the board and the teacher on several replicas holds the supernet's graph (every
    branch of every layer) once, as one function its calls share, instead of once per call and
    per replica. The caller assigns the new state (`assign`) when it wants the BatchNorm updates.
    Called from a step compiled with XLA, it is compiled with the step.
    """

    def __init__(self, supernet: SuperNet, training: bool = True):
        self.supernet = supernet
        self.training = bool(training)
        self.trainable = list(supernet.trainable_variables)
        self.state = list(supernet.non_trainable_variables)
        r = supernet.space.resolution
        spec = lambda v: tf.TensorSpec(v.shape, v.dtype)  # noqa: E731
        signature = ([spec(v) for v in self.trainable], [spec(v) for v in self.state],
                     tf.TensorSpec([None, r, r, 3], tf.float32),
                     tf.TensorSpec([supernet.space.num_layers], tf.int32))
        self.function = tf.function(self._pure, input_signature=signature)
        self._concrete = None

    def _pure(self, weights, state, images, path):
        mapping = list(zip(self.trainable, weights)) + list(zip(self.state, state))
        with keras.StatelessScope(mapping, initialize_variables=False) as scope:
            logits = self.supernet(images, path=path, training=self.training, scope=scope)
        return logits, [scope.get_current_value(v) for v in self.state]

    def values(self):
        """(weights, state): the variables' current values (on this replica, in a replica
        function); read under a GradientTape, the weights carry gradients to the variables."""
        return read_values(self.trainable), read_values(self.state)

    @property
    def concrete(self):
        """The one trace, made outside any graph or replica context on first use.

        Called through `tf.function`, the forward would be traced again for each replica:
        under MirroredStrategy the function's cache key holds the device. The body reads no
        variable, so one trace is right for every device; called as a concrete function, its
        ops run on the caller's device.
        """
        if self._concrete is None:
            with tf.init_scope():
                self._concrete = self.function.get_concrete_function()
        return self._concrete

    def __call__(self, weights, state, images, path):
        return self.concrete(list(weights), list(state), tf.cast(images, tf.float32),
                             tf.cast(path, tf.int32))

    def assign(self, state):
        """Writes a forward's new state (BatchNorm statistics) into the variables."""
        for variable, value in zip(self.state, state):
            variable.assign(value)

    @property
    def tracing_count(self) -> int:
        return self.function.experimental_get_tracing_count()


def read_values(variables) -> list:
    """The current values of `variables` as tensors (this replica's copies, in a replica
    function; under a GradientTape, reads that carry gradients to the variables)."""
    return [tf.convert_to_tensor(v.value) for v in variables]


# Per-stage form from either form (not validated); `arch` owns the codec, this was its first home.
nested_path = arch_lib.nested_path


def path_tensor(path, space: Space) -> tf.Tensor:
    """A path (per-stage lists, flat list or array) checked against `space`, as int32 [L]."""
    nested = arch_lib.validate_path(nested_path(path, space), space)
    return tf.constant(arch_lib.flat_path(nested), tf.int32)




def _child_name_map(supernet: SuperNet, path) -> dict:
    """supernet layer (path object) -> child layer name, for the layers `path` uses."""
    space = supernet.space
    nested = arch_lib.validate_path(nested_path(path, space), space)
    mapping = {}
    for part in (supernet.stem_ds, supernet.final_head):
        for layer in part.layers:
            if layer.weights:
                mapping[layer.name] = layer
    l = 0
    for s, stage in enumerate(nested):
        b = 0
        for i, o in enumerate(stage):
            branch = supernet.choices[l].branches[o]
            l += 1
            if branch is None:
                continue
            src_prefix = _branch_prefix(s, i, o)
            dst_prefix = child_lib.block_prefix(s, b)
            b += 1
            for layer in branch.layers:
                if layer.weights:
                    if not layer.name.startswith(src_prefix + "_"):
                        raise RuntimeError(f"unexpected branch layer name {layer.name!r}")
                    mapping[dst_prefix + layer.name[len(src_prefix):]] = layer
    return mapping


def inherit_weights(child_model: keras.Model, supernet: SuperNet, path) -> keras.Model:
    """Copies the weights (incl. BN statistics) of `path` from `supernet` into `child_model`.

    `child_model` must be `child.build(path, supernet.space)` (any input size, dropout or
    classifier activation). Layers are matched by name; every weighted layer of the child must find
    its source and shapes must agree, otherwise a ValueError names the layer. Returns the child.
    """
    mapping = _child_name_map(supernet, path)
    child_layers = {}

    def collect(model):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                collect(layer)
            elif layer.weights:
                child_layers[layer.name] = layer

    collect(child_model)
    missing = sorted(set(child_layers) - set(mapping))
    extra = sorted(set(mapping) - set(child_layers))
    if missing or extra:
        raise ValueError(
            "the child does not match the path: "
            + (f"child layers without a supernet source: {missing[:5]}; " if missing else "")
            + (f"path layers missing from the child: {extra[:5]}" if extra else "")
            + " (build it with cream_tf.child.build(path, supernet.space))")
    for name, layer in child_layers.items():
        src = mapping[name].get_weights()
        dst = layer.get_weights()
        if [w.shape for w in src] != [w.shape for w in dst]:
            raise ValueError(f"layer {name!r}: shapes {[w.shape for w in dst]} in the child, "
                             f"{[w.shape for w in src]} in the supernet")
        layer.set_weights(src)
    return child_model
