"""Every third-party internal cream_tf relies on, in one place (issue 16).

Everywhere else cream_tf uses public APIs only. What is here is a private name of TensorFlow,
Keras, keras-tuner or torch (a module under `tensorflow.python`, an underscore attribute, or a
private method a base class calls and we override) for which no public API does the same job.
Each function or hook says why it is needed and on which versions it was checked, and
tests/test_internals.py exercises the real behaviour of each one, so an upgrade that removes or
changes an internal fails there, naming the internal, rather than somewhere deep inside a search
or a retrain (or, worse, silently: a renamed hook is simply no longer called).

Checked on TensorFlow 2.21.0, Keras 3.15.1, keras-tuner 1.4.8 and torch 2.13.0.

Nothing heavy is imported at module level: TensorFlow's internal module is imported on first
use, keras-tuner and torch never (their objects are passed in), so importing this module costs
what its caller already paid.
"""
from __future__ import annotations

import collections
import functools

__all__ = ["unlowered_switch_case", "track_checkpoint_dependency", "all_sublayers",
           "optimizer_variable_index", "UpdateAllVariablesHook", "BackupHook", "BackupFiles",
           "backup_files", "backup_position", "oracle_has_tried", "gp_training_data",
           "TunerHooks", "torch_tensor_rebuilders"]


# -- TensorFlow --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cond_v2():
    try:
        from tensorflow.python.ops import cond_v2
    except ImportError:  # pragma: no cover - present in every TF 2.x so far
        return None
    return cond_v2


def unlowered_switch_case(index, branch_fns):
    """`tf.switch_case` whose traced `Case` op is not lowered into Switch/Merge nodes.

    Why: lowered (TensorFlow's default for a traced `Case`), every node of every untaken branch,
    forward and backward, stays in the graph and is processed as dead on every step; a supernet
    layer has six branches and runs one, and that executor work dominated the search step at
    small resolutions (see `supernet.switch`). `tf.switch_case` has no argument for this; only
    `cond_v2.indexed_case(..., lower_using_switch_merge=False)` does, and its gradient `Case`
    keeps the setting. Checked on TF 2.21.0. Without the module (never seen so far) this falls
    back to `tf.switch_case`: correct, slower; tests/test_internals.py fails then.
    Call it inside a traced function only (`supernet.switch` does the eager case).
    """
    cond_v2 = _cond_v2()
    if cond_v2 is None:  # pragma: no cover
        import tensorflow as tf

        return tf.switch_case(index, branch_fns)
    return cond_v2.indexed_case(index, branch_fns, lower_using_switch_merge=False)


# -- Keras -------------------------------------------------------------------------------------

def track_checkpoint_dependency(owner, trackable, name: str):
    """Makes `trackable` a `tf.train.Checkpoint` dependency of the Keras layer `owner`, as `name`.

    Why: Keras 3 tracks layers held in a list attribute for its own weights (`owner.weights`,
    `.weights.h5`) as a `TrackedList`, which is no checkpoint dependency, so
    `tf.train.Checkpoint(supernet=...)` silently skipped the supernet's branches and with them
    their BatchNorm moving statistics. The public way, assigning each one to an attribute, also
    moves it in the layout of `.weights.h5` files (`o0/vars` instead of `branches/<name>/vars`),
    so weight files written before would no longer load; `_track_trackable` (TensorFlow's
    `Trackable` API, which Keras' TF-backend layers inherit) adds the checkpoint dependency only.
    Checked on TF 2.21.0 with Keras 3.15.1.
    """
    owner._track_trackable(trackable, name=name)


def all_sublayers(model):
    """Every layer inside `model` at any depth (not `model` itself), in Keras' order.

    Why: Keras 3 has no public recursive walk. `Model.layers` lists one level, and a plain
    `Layer` exposes its sublayers only through private tracking; a walk over `.layers` would miss
    a layer inside a built-in wrapper (`TimeDistributed`, `Bidirectional`) or RNN cell, which
    `export_keras` must see to refuse a model that would not load without its code. Checked on
    Keras 3.15.1 (`Layer._flatten_layers(include_self=False)`, recursive by default).
    """
    return model._flatten_layers(include_self=False)


def optimizer_variable_index(optimizer, variable) -> int:
    """Position of `variable` among the variables `optimizer` was built with.

    Why: an optimizer that keeps per-variable state (slots, owners, flags) in lists indexed like
    its variables must find a variable's index inside `update_step`, where Keras passes the
    variable as it sees it: under a `tf.distribute` strategy a replica's component or a
    `tf.Variable` rather than the `keras.Variable` that was built, which Keras maps back by its
    own key. Keras' built-in optimizers (SGD's `momentums`, Adam's slots) use this same private
    method; no public equivalent exists. Checked on Keras 3.15.1.
    """
    return optimizer._get_variable_index(variable)


class UpdateAllVariablesHook:
    """Mixin for a `keras.optimizers.Optimizer` subclass: override `update_variables` to update
    all the variables of a step at once instead of one `update_step` call per variable.

    Why: `Optimizer.apply` (after unscaling, clipping and gradient accumulation, before the EMA
    update and the iteration count) calls the private `_backend_update_step(grads, variables,
    learning_rate)` once per step; the public `update_step` sees one variable at a time, so it
    cannot group variables (PathSGD puts all the variables of a branch under one `tf.cond`).
    Overriding `apply` instead would mean copying everything else it does. Checked on Keras
    3.15.1 (TensorFlow backend: `TFOptimizer._backend_update_step` adds tf.distribute's merge).
    List this mixin before the Keras class in the bases.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        return self.update_variables(grads, trainable_variables, learning_rate)

    def update_variables(self, grads, trainable_variables, learning_rate):
        """Keras' own update: `update_step` for every variable (under a strategy, merged)."""
        return super()._backend_update_step(grads, trainable_variables, learning_rate)


BackupFiles = collections.namedtuple("BackupFiles",
                                     ["weights", "metadata", "prev_weights", "prev_metadata"])


class BackupHook:
    """Mixin for a `keras.callbacks.BackupAndRestore` subclass: override `save_backup` to change
    how the backup is written.

    Why: `BackupAndRestore` writes its backup in the private `_save_model()`, called at the end
    of an epoch (and every `save_freq` batches); `on_train_begin` reads it back from the same
    files. A subclass that writes them differently (atomically, `retrain.AtomicBackupAndRestore`)
    must replace that method and keep Keras' restore; a callback of our own would have to resume
    the fit's epoch through the model's private `_initial_epoch` instead. Checked on Keras 3.15.1.
    List this mixin before the Keras class in the bases.
    """

    def _save_model(self):
        self.save_backup()

    def save_backup(self):
        """Keras' own backup: the weights and the (epoch, batch) metadata, at `backup_files`."""
        return super()._save_model()


def backup_files(callback) -> BackupFiles:
    """The files a `keras.callbacks.BackupAndRestore` writes (and reads back on restart).

    Why: Keras keeps their paths in private attributes only (in `backup_dir`: latest.weights.h5,
    training_metadata.json, and the `.bkp` copies kept with `double_checkpoint=True`); a
    replacement `save_backup` must write exactly the files Keras' restore reads. Checked on
    Keras 3.15.1.
    """
    return BackupFiles(callback._weights_path, callback._training_metadata_path,
                       callback._prev_weights_path, callback._prev_training_metadata_path)


def backup_position(callback) -> tuple:
    """(epoch, batch) a `keras.callbacks.BackupAndRestore` records in its next backup.

    Why: private counters of the callback (`_current_epoch`: set to epoch + 1 at the end of
    each epoch, 0 before the first end of this fit, also in a fit that resumed later;
    `_last_batch_seen`: the last batch seen in the epoch when `save_freq` is a number of
    batches, else 0); a replacement `save_backup` must write the same metadata. Checked on
    Keras 3.15.1.
    """
    return callback._current_epoch, callback._last_batch_seen


# -- keras-tuner -------------------------------------------------------------------------------

def oracle_has_tried(oracle, values) -> bool:
    """True if a trial of `oracle` (a `keras_tuner.Oracle`) already had these `values`.

    Why: an oracle subclass that proposes its own values (ours draw paths within a MACs range)
    must not propose a tried one again. keras-tuner keeps the hashes of tried values in a private
    set, restored with the oracle's state and checked by the private `_duplicate`; rebuilding it
    from the public `oracle.trials` would compare every trial on each of the thousands of draws
    a proposal can take. Checked on keras-tuner 1.4.8.
    """
    return oracle._duplicate(values)


def gp_training_data(oracle) -> tuple:
    """(x, y, hyperparameters) of a `keras_tuner.oracles.BayesianOptimizationOracle`: its
    Gaussian process' training inputs and targets, and the hyperparameters x's columns follow.

    x embeds each trial's values in [0, 1] per non-fixed hyperparameter; y is its score as a
    minimisation (negated when maximising), running trials getting the process' pessimistic
    guess. Why: `MacsBayesianOptimizationOracle` fits the oracle's process exactly as keras-tuner
    does before it ranks its own candidates; keras-tuner builds these in the private
    `_vectorize_trials` and `_nonfixed_space`. A copy from public attributes would have to copy
    their corner cases as well (a trial of another status takes the previous trial's score).
    Checked on keras-tuner 1.4.8.
    """
    x, y = oracle._vectorize_trials()
    return x, y, oracle._nonfixed_space()


class TunerHooks:
    """Mixin for a `keras_tuner.Tuner` subclass whose oracle holds the complete search space.

    Why: keras-tuner calls two private methods of the tuner, and their stock versions do work
    a cream_tf tuner must skip; no public setting turns either off. Checked on keras-tuner 1.4.8
    with TF 2.21.0. List this mixin before the keras-tuner class in the bases.
    """

    def _populate_initial_space(self):
        # Called by `BaseTuner.__init__` (unless reloading a project): the stock version builds
        # the hypermodel's model, a whole network, to discover the hyperparameters. Ours come
        # complete from the oracle; just register them.
        self.oracle.update_space(self.oracle.get_space())

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # Called by `Tuner.run_trial` for every execution: on the TensorFlow backend the stock
        # version imports tensorboard even when no TensorBoard callback is given, and TF 2.21
        # does not install tensorboard. Import it only when there is a callback to configure.
        if any(type(c).__name__ == "TensorBoard" for c in callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)


# -- torch -------------------------------------------------------------------------------------

_TORCH_REBUILDERS = ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_tensor")


def torch_tensor_rebuilders(torch) -> dict:
    """{(module, name): function} of the torch functions a pickled checkpoint calls to rebuild
    its tensors and parameters, for an unpickler that resolves nothing else.

    Why: a torch checkpoint's pickle names these private functions of `torch._utils`, so an
    allow-list unpickler (`torch_weights`, which must read pickled non-tensor objects as inert
    placeholders, where the public `torch.load(weights_only=True)` refuses the whole file) has
    to resolve them by those names. The ones missing from the installed torch are left out.
    Checked on torch 2.13.0 (zip and legacy formats).
    """
    found = {}
    for name in _TORCH_REBUILDERS:
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            found[("torch._utils", name)] = fn
    return found
