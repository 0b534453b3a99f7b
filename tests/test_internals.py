"""cream_tf.internals: each third-party internal cream_tf relies on still does what we use it for.

One test (or two) per function or hook, exercising its real behaviour, with a message that names
the internal and the version it was checked on: after an upgrade, a failure here says which
internal went away or changed before a search or a retrain meets it.
"""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import EpochsBegun
from cream_tf import internals

CHECKED = "checked on TF 2.21.0, Keras 3.15.1, keras-tuner 1.4.8, torch 2.13.0"


def _message(internal, what):
    return f"{internal}: {what} ({CHECKED}); see cream_tf/internals.py"


# -- TensorFlow --------------------------------------------------------------------------------

def _case_ops(graph):
    ops = [op for op in graph.get_operations() if op.type in ("Case", "StatelessCase")]
    for function in graph._functions.values():  # the gradient's Case sits in a function body
        ops += [op for op in function.graph.get_operations()
                if op.type in ("Case", "StatelessCase")]
    return ops


def test_unlowered_switch_case_keeps_one_case_op_forward_and_backward():
    assert internals._cond_v2() is not None, _message(
        "tensorflow.python.ops.cond_v2", "the module is gone; supernet.switch now falls back "
        "to the lowered tf.switch_case (correct but slower)")
    w = tf.Variable([1.0, 2.0, 3.0])

    @tf.function
    def f(i):
        with tf.GradientTape() as tape:
            y = internals.unlowered_switch_case(
                i, [lambda: w[0] * 2.0, lambda: w[1] * w[1], lambda: tf.reduce_sum(w)])
        return y, tape.gradient(y, w)

    expected = [(2.0, [2, 0, 0]), (4.0, [0, 4, 0]), (6.0, [1, 1, 1])]
    for i, (value, grad) in enumerate(expected):
        y, g = f(tf.constant(i))
        assert float(y) == value and g.numpy().tolist() == grad, _message(
            "cond_v2.indexed_case", f"branch {i} computed {float(y)}, {g.numpy()}")
    graph = f.get_concrete_function(tf.TensorSpec([], tf.int32)).graph
    cases = _case_ops(graph)
    assert len(cases) >= 2, _message(
        "cond_v2.indexed_case", f"expected a forward and a gradient Case op, found "
        f"{[op.type for op in cases]}")
    for op in cases:
        assert op.get_attr("_lower_using_switch_merge") is False, _message(
            "cond_v2.indexed_case(lower_using_switch_merge=False)",
            f"{op.name} would be lowered into Switch/Merge")


# -- Keras -------------------------------------------------------------------------------------

class _ListHolder(keras.layers.Layer):
    """Holds its sublayers in a list attribute, as supernet.ChoiceLayer does."""

    def __init__(self, track, **kwargs):
        super().__init__(**kwargs)
        self.parts = [keras.layers.BatchNormalization(name="bn0"),
                      keras.layers.BatchNormalization(name="bn1")]
        if track:
            for k, part in enumerate(self.parts):
                internals.track_checkpoint_dependency(self, part, f"o{k}")

    def call(self, x):
        return self.parts[1](self.parts[0](x))


def test_track_checkpoint_dependency_puts_list_held_layers_in_checkpoints(tmp_path):
    def holder(track):
        layer = _ListHolder(track)
        layer(tf.zeros([1, 3]))
        return layer

    untracked = holder(False)
    names = [name for name, _ in tf.train.list_variables(
        tf.train.Checkpoint(layer=untracked).write(str(tmp_path / "untracked")))]
    if any("moving_mean" in n for n in names):
        pytest.fail(_message("Layer._track_trackable", "Keras now checkpoints list-held layers "
                             "by itself; the call in supernet._track_for_checkpoints may go"))
    saved = holder(True)
    for k, part in enumerate(saved.parts):
        part.moving_mean.assign([k + 1.0] * 3)
    path = tf.train.Checkpoint(layer=saved).write(str(tmp_path / "tracked"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any(n.startswith("layer/o1/") and "moving_mean" in n for n in names), _message(
        "Layer._track_trackable", f"the checkpoint does not hold layer/o1's statistics: {names}")
    restored = holder(True)
    tf.train.Checkpoint(layer=restored).read(path).assert_existing_objects_matched()
    assert [p.moving_mean.numpy().tolist() for p in restored.parts] == [[1.0] * 3, [2.0] * 3], \
        _message("Layer._track_trackable", "moving statistics did not come back from the "
                                           "checkpoint")
    assert len(saved.weights) == 8, _message(
        "Layer._track_trackable", f"Keras now lists {len(saved.weights)} weights, not 8 (two "
                                  "BatchNorms counted twice?)")


class _Custom(keras.layers.Layer):
    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def test_all_sublayers_walks_nested_models_and_wrappers():
    inner_in = keras.Input((4, 3))
    inner = keras.Model(inner_in, keras.layers.TimeDistributed(_Custom(name="deep"))(inner_in),
                        name="inner")
    x = keras.Input((4, 3))
    model = keras.Model(x, keras.layers.Dense(2, name="head")(inner(x)), name="outer")
    found = {layer.name for layer in internals.all_sublayers(model)}
    for name in ("inner", "time_distributed", "deep", "head"):
        assert any(n == name or n.startswith(name) for n in found), _message(
            "Layer._flatten_layers(include_self=False)", f"missed {name!r}; found {found}")
    assert "outer" not in found, _message("Layer._flatten_layers(include_self=False)",
                                          "now yields the model itself")


def _variables():
    return [keras.Variable(np.ones(shape, np.float32), name=f"v{k}")
            for k, shape in enumerate([(2,), (3, 2), ()])]


class _IndexRecorder(keras.optimizers.SGD):
    def __init__(self, **kwargs):
        super().__init__(learning_rate=0.5, name="recorder", **kwargs)
        self.seen = []

    def update_step(self, gradient, variable, learning_rate):
        self.seen.append(internals.optimizer_variable_index(self, variable))
        super().update_step(gradient, variable, learning_rate)


@pytest.mark.parametrize("mode", ["eager", "traced", "mirrored"])
def test_optimizer_variable_index_inside_update_step(mode):
    from conftest import mirrored

    strategy = mirrored() if mode == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        variables = _variables()
        opt = _IndexRecorder()
        opt.build(variables)
    grads = [tf.ones(v.shape) for v in variables]
    if mode == "eager":
        opt.apply(grads, variables)
    elif mode == "traced":
        tf.function(lambda: opt.apply(grads, variables))()
    else:
        tf.function(lambda: strategy.run(lambda: opt.apply(grads, variables)))()
    assert sorted(set(opt.seen)) == [0, 1, 2], _message(
        "Optimizer._get_variable_index", f"{mode}: indices {opt.seen} inside update_step")


class _GroupedSGD(internals.UpdateAllVariablesHook, keras.optimizers.SGD):
    calls = None

    def update_variables(self, grads, trainable_variables, learning_rate):
        self.calls = (self.calls or 0) + 1
        self.count = len(trainable_variables)
        return super().update_variables(grads, trainable_variables, learning_rate)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_update_all_variables_hook_sees_every_variable_once_per_step(traced):
    assert not hasattr(keras.optimizers.Optimizer, "update_variables"), _message(
        "Optimizer", "Keras now has its own update_variables; rename the hook's public method")
    ours, theirs = _variables(), _variables()
    hooked = _GroupedSGD(learning_rate=0.5, momentum=0.9, name="grouped")
    plain = keras.optimizers.SGD(learning_rate=0.5, momentum=0.9)
    hooked.build(ours)
    grads = [tf.fill(v.shape, 0.25) for v in ours]
    step = tf.function(lambda: hooked.apply(grads, ours)) if traced else (
        lambda: hooked.apply(grads, ours))
    for _ in range(2):
        step()
        plain.apply(grads, theirs)
    want = 1 if traced else 2  # traced: the Python call happens once, in the trace
    assert hooked.calls == want and hooked.count == 3, _message(
        "Optimizer._backend_update_step", f"called {hooked.calls} times for 2 steps (want "
        f"{want}), last with {getattr(hooked, 'count', 0)} of 3 variables")
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), _message(
            "Optimizer._backend_update_step", "the default update differs from Keras' SGD"))


def _tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


class _RecordingBackup(internals.BackupHook, keras.callbacks.BackupAndRestore):
    def save_backup(self):
        self.saved = getattr(self, "saved", []) + [internals.backup_position(self)]
        super().save_backup()


@pytest.mark.parametrize("save_freq", ["epoch", 2])
def test_backup_hook_files_and_position_are_what_keras_writes_and_restores(tmp_path, save_freq):
    x, y = np.ones((8, 2), np.float32), np.ones((8, 1), np.float32)
    backup = _RecordingBackup(str(tmp_path / "backup"), save_freq=save_freq,
                              delete_checkpoint=False, double_checkpoint=True)
    files = internals.backup_files(backup)
    assert os.path.dirname(files.weights) == str(tmp_path / "backup"), _message(
        "BackupAndRestore._weights_path", f"{files}")
    _tiny_model().fit(x, y, batch_size=2, epochs=2, callbacks=[backup], verbose=0)
    # 4 batches per epoch: a save at each epoch's end, or after batches 1 and 3 of each epoch
    want = [(1, 0), (2, 0)] if save_freq == "epoch" else [(0, 1), (0, 3), (1, 1), (1, 3)]
    assert getattr(backup, "saved", None) == want, _message(
        "BackupAndRestore._save_model / _current_epoch / _last_batch_seen",
        f"saves at (epoch, batch) {getattr(backup, 'saved', None)}, not {want}")
    for path in files:
        assert os.path.exists(path), _message("BackupAndRestore file paths", f"{path} missing")
    with open(files.metadata) as f:
        assert json.load(f) == dict(zip(["epoch", "batch"], want[-1])), _message(
            "BackupAndRestore metadata", f"{files.metadata} holds something else")
    # what a replacement save writes at these paths is what Keras restores from
    with open(files.metadata, "w") as f:
        json.dump({"epoch": 1, "batch": 0}, f)
    log = EpochsBegun()
    again = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    assert internals.backup_files(again) == files
    _tiny_model().fit(x, y, batch_size=2, epochs=3, callbacks=[again, log], verbose=0)
    assert log.started == [1, 2], _message(
        "BackupAndRestore restore", f"resumed at epochs {log.started}, not from the metadata "
                                    f"written at {files.metadata}")


# -- keras-tuner -------------------------------------------------------------------------------

def _hyperparameters():
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Choice("a", ["x", "y", "z"], ordered=False)
    hp.Fixed("f", 3)
    hp.Choice("b", ["p", "q"], ordered=False)
    return hp


def test_oracle_has_tried_knows_created_trials_also_after_a_reload(tmp_path):
    import keras_tuner as kt

    def oracle():
        made = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"),
                                             hyperparameters=_hyperparameters(), max_trials=5,
                                             seed=1)
        made._set_project_dir(str(tmp_path), "p")
        return made

    first = oracle()
    trial = first.create_trial("tuner0")
    tried = dict(trial.hyperparameters.values)
    other = {**tried, "a": next(v for v in "xyz" if v != tried["a"])}
    assert internals.oracle_has_tried(first, tried), _message(
        "Oracle._duplicate", f"a created trial's values {tried} count as untried")
    assert not internals.oracle_has_tried(first, other), _message(
        "Oracle._duplicate", f"values never proposed ({other}) count as tried")
    first.update_trial(trial.trial_id, {"score": 1.0})
    first.end_trial(trial)
    again = oracle()
    again.reload()
    assert internals.oracle_has_tried(again, tried), _message(
        "Oracle._duplicate", "tried values are forgotten when the project is reloaded")


def test_gp_training_data_embeds_values_and_negates_maximised_scores(tmp_path):
    import keras_tuner as kt

    oracle = kt.oracles.BayesianOptimizationOracle(
        objective=kt.Objective("score", "max"), hyperparameters=_hyperparameters(),
        max_trials=10, num_initial_points=5, seed=1)
    oracle._set_project_dir(str(tmp_path), "p")
    rows = {}
    for k, status in enumerate(["COMPLETED", "COMPLETED", "FAILED"]):
        trial = oracle.create_trial(f"tuner{k}")
        if status == "COMPLETED":
            oracle.update_trial(trial.trial_id, {"score": 0.5 + k})
        trial.status = status
        oracle.end_trial(trial)
        rows[trial.trial_id] = (trial.hyperparameters.values, 0.5 + k, status)
    x, y, hps = internals.gp_training_data(oracle)
    assert [hp.name for hp in hps] == ["a", "b"], _message(
        "BayesianOptimizationOracle._nonfixed_space", f"columns {[hp.name for hp in hps]}")
    completed = [(v, s) for v, s, status in rows.values() if status == "COMPLETED"]
    want_x = [[hp.value_to_prob(v[hp.name]) for hp in hps] for v, _ in completed]
    assert np.allclose(x, want_x) and np.allclose(y, [-s for _, s in completed]), _message(
        "BayesianOptimizationOracle._vectorize_trials", f"x={x.tolist()}, y={y.tolist()} "
        f"for trials {rows}")


class _Build:
    def __init__(self):
        self.builds = 0


def _hypermodel(counter):
    import keras_tuner as kt

    class Model(kt.HyperModel):
        def build(self, hp):
            counter.builds += 1
            hp.Choice("a", ["x", "y", "z"], ordered=False)
            model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
            return model

    return Model()


def test_tuner_hooks_are_called_by_keras_tuner(tmp_path):
    import keras_tuner as kt

    calls = []

    class Tuner(internals.TunerHooks, kt.Tuner):
        def _populate_initial_space(self):
            calls.append("populate")
            super()._populate_initial_space()

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            calls.append("tensorboard")
            super()._configure_tensorboard_dir(callbacks, trial, execution)

    counter = _Build()
    hp = kt.HyperParameters()
    hp.Choice("a", ["x", "y", "z"], ordered=False)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_loss", "min"),
                                           hyperparameters=hp, max_trials=1, seed=1)
    tuner = Tuner(oracle, _hypermodel(counter), directory=str(tmp_path), project_name="p")
    assert calls == ["populate"] and counter.builds == 0, _message(
        "BaseTuner._populate_initial_space", f"calls {calls}, {counter.builds} start-up builds")
    assert [h.name for h in tuner.oracle.get_space().space] == ["a"]
    x, y = np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)
    # on the TensorFlow backend the stock hook imports tensorboard, which TF 2.21 lacks
    tuner.search(x, y, validation_data=(x, y), epochs=1, verbose=0)
    assert calls == ["populate", "tensorboard"], _message(
        "Tuner._configure_tensorboard_dir", f"calls {calls}")
    assert counter.builds == 1 and len(tuner.oracle.trials) == 1


# -- torch -------------------------------------------------------------------------------------

@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_tensor_rebuilders_read_tensors_and_parameters(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    import collections
    import pickle

    rebuilders = internals.torch_tensor_rebuilders(torch)
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        assert ("torch._utils", name) in rebuilders, _message(f"torch._utils.{name}", "is gone")
    allowed = {**rebuilders, ("collections", "OrderedDict"): collections.OrderedDict}
    asked = []

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            asked.append((module, name))
            return allowed[(module, name)]

    class Module:  # a pickle module resolving only the allowed globals
        pass

    Module.Unpickler = Unpickler
    Module.load = staticmethod(lambda f, **kw: Unpickler(f, **kw).load())
    state = collections.OrderedDict(
        w=torch.arange(6, dtype=torch.float32).reshape(2, 3),
        p=torch.nn.Parameter(torch.ones(2)), n=torch.tensor([7], dtype=torch.int64))
    path = str(tmp_path / "ckpt.pth")
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=Module)
    assert set(loaded) == {"w", "p", "n"}
    for key in state:
        assert torch.equal(loaded[key].detach(), state[key].detach()), _message(
            "torch._utils rebuilders", f"{key} read back as {loaded[key]}")
    assert isinstance(loaded["p"], torch.nn.Parameter)
    assert {name for module, name in asked if module == "torch._utils"} <= {
        name for _, name in rebuilders}
