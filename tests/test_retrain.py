"""Retraining a child from scratch (cream_tf.retrain)."""
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import data, retrain
from cream_tf.space import Space
from conftest import EpochsBegun, mirrored

RES = 32
PATH = [[0]] * 5  # one MB4 3x3 block per stage


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", RES)


@pytest.fixture(scope="module")
def space():
    return Space("mbconv", depth=1, resolution=RES, width=0.25, num_classes=10)


def small_config(**changes):
    base = dict(epochs=2, batch_size=16, steps_per_epoch=4, lr=2.0, warmup_epochs=0,
                ema_decay=0.8, dropout=0.0, verbose=0, augment=data.Augment.none())
    return retrain.RetrainConfig(**{**base, **changes})


# -- recipe pieces ---------------------------------------------------------------------------

def test_rmsprop_tf_matches_hand_computed_steps():
    w = keras.Variable(np.array([[1.0, -2.0]], np.float32))   # 2-D: gets L2
    b = keras.Variable(np.array([0.5], np.float32))           # 1-D: no L2
    opt = retrain.RMSpropTF(learning_rate=0.1, rho=0.9, momentum=0.9, epsilon=1e-3, l2=0.01)
    grads = [np.array([[0.3, -0.1]], np.float32), np.array([2.0], np.float32)]
    ms = [np.ones((1, 2)), np.ones(1)]
    mom = [np.zeros((1, 2)), np.zeros(1)]
    ref = [w.numpy().astype(np.float64), b.numpy().astype(np.float64)]
    for _ in range(3):
        opt.apply_gradients([(tf.constant(g), v) for g, v in zip(grads, (w, b))])
        for i, g in enumerate(grads):
            g = g + (0.01 * ref[i] if i == 0 else 0)
            ms[i] = 0.9 * ms[i] + 0.1 * g * g
            mom[i] = 0.9 * mom[i] + 0.1 * g / np.sqrt(ms[i] + 1e-3)
            ref[i] = ref[i] - mom[i]
    np.testing.assert_allclose(w.numpy(), ref[0], rtol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref[1], rtol=1e-5)


def test_rmsprop_tf_config_round_trip():
    opt = retrain.RMSpropTF(learning_rate=0.2, rho=0.8, momentum=0.7, epsilon=1e-4, l2=1e-5,
                            use_ema=True, ema_momentum=0.999)
    again = retrain.RMSpropTF.from_config(opt.get_config())
    assert (again.rho, again.momentum, again.epsilon, again.l2) == (0.8, 0.7, 1e-4, 1e-5)
    assert again.use_ema and again.ema_momentum == 0.999


def test_learning_rate_schedule_warmup_then_cosine():
    config = retrain.RetrainConfig(epochs=10, batch_size=512, warmup_epochs=2, warmup_lr=1e-6)
    assert config.scaled_lr == pytest.approx(0.032)
    schedule = retrain.learning_rate_schedule(config, steps_per_epoch=100)
    assert float(schedule(0)) == pytest.approx(1e-6)
    assert float(schedule(100)) == pytest.approx((1e-6 + 0.032) / 2, rel=1e-3)
    assert float(schedule(200)) == pytest.approx(0.032, rel=1e-4)
    assert float(schedule(600)) == pytest.approx(0.016, rel=1e-3)  # half way through the cosine
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("changes,message", [
    ({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"), ({"warmup_epochs": 5, "epochs": 5}, "warmup"),
    ({"ema_decay": 1.0}, "ema_decay"), ({"dropout": 1.0}, "dropout"),
])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        retrain.RetrainConfig(**changes)


def test_class_mismatch_is_a_clear_error(digits, tmp_path):
    splits, info = digits
    with pytest.raises(ValueError, match="space has 5 classes but dataset 'digits' has 10"):
        retrain.retrain(PATH, Space("mbconv", depth=1, resolution=RES, num_classes=5), splits,
                        info, str(tmp_path), small_config())


# -- training --------------------------------------------------------------------------------

def only_builtin_layers(path):
    with zipfile.ZipFile(path) as z:
        config = z.read("config.json").decode()
        assert not json.loads(config).get("compile_config")  # no optimizer, no loss
    assert "cream_tf" not in config
    model = keras.saving.load_model(path)
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    return model


@pytest.mark.slow  # ~60 s on the shared 2-core machine: tracing under MirroredStrategy
def test_retrain_under_mirrored_strategy_beats_chance(digits, space, tmp_path, record_property):
    keras.utils.set_random_seed(0)
    splits, info = digits
    strategy = mirrored()
    assert strategy.num_replicas_in_sync == 2
    config = small_config(epochs=2, steps_per_epoch=12, batch_size=32)
    result = retrain.retrain(PATH, space, splits, info, str(tmp_path), config, strategy=strategy)
    record_property("val_accuracy", result.val_accuracy)
    record_property("test_accuracy", result.test_accuracy)
    # op determinism (conftest) makes these the same numbers on every run
    assert result.val_accuracy > 0.3 and result.test_accuracy > 0.3  # chance is 0.1
    assert result.history["epoch"] == [1, 2] and len(result.history["val_accuracy"]) == 2
    # EMA evaluation: after fit the model holds the optimizer's moving averages...
    optimizer = result.model.optimizer
    for var, avg in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
        np.testing.assert_allclose(var.numpy(), avg.numpy())
    # ...and they differ from the last raw weights, so the reported accuracy is the EMA's.
    final = only_builtin_layers(result.final_path)
    val = data.eval_pipeline(splits.val, RES, batch_size=64, crop_pct=info.eval_crop_pct)
    logits = np.concatenate([final.predict(x, verbose=0) for x, _ in val])
    labels = np.concatenate([y.numpy() for _, y in val])
    assert np.mean(logits.argmax(-1) == labels) == pytest.approx(result.val_accuracy, abs=1e-6)
    # the best checkpoint is the EMA model of the best epoch
    best = only_builtin_layers(result.best_path)
    assert result.best_val_accuracy == max(result.history["val_accuracy"])
    with open(result.best_path + ".json") as f:
        assert json.load(f)["val_accuracy"] == result.best_val_accuracy
    assert best.count_params() == final.count_params()
    assert not os.path.exists(os.path.join(str(tmp_path), "backup"))  # removed when done
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


class _Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


@pytest.mark.slow  # ~55 s: two fits
def test_rerun_after_crash_resumes_from_backup(digits, space, tmp_path):
    splits, info = digits
    config = small_config(epochs=3, steps_per_epoch=3, batch_size=8)
    workdir = str(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        retrain.retrain(PATH, space, splits, info, workdir, config, callbacks=[_Crash(1)])
    assert os.path.exists(os.path.join(workdir, "backup", "latest.weights.h5"))
    with open(os.path.join(workdir, "history.json")) as f:
        assert [e["epoch"] for e in json.load(f)] == [1, 2]
    epochs = EpochsBegun()
    result = retrain.retrain(PATH, space, splits, info, workdir, config, callbacks=[epochs])
    assert epochs.started == [2]  # only the third epoch ran again
    assert int(result.model.optimizer.iterations.numpy()) == 3 * 3  # optimizer state restored
    assert result.history["epoch"] == [1, 2, 3]
    assert os.path.exists(result.final_path)
    # a finished run is returned as it is, not trained again
    epochs = EpochsBegun()
    again = retrain.retrain(PATH, space, splits, info, workdir, config, callbacks=[epochs])
    assert epochs.started == [] and again.val_accuracy == result.val_accuracy
    assert again.test_accuracy == result.test_accuracy and again.history == result.history
    assert again.model.count_params() == result.model.count_params()


class _RecordStats(keras.callbacks.Callback):
    """Records the raw BN statistics after every training step (runs before the EMA callback)."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([v.numpy().copy() for v in self.model.non_trainable_variables])


def test_ema_batch_norm_statistics_follow_the_weight_ema():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.7),
                  loss="mse")
    xs = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype(np.float32)
    ys = np.zeros((32, 2), np.float32)
    record = _RecordStats()
    ema_bn = retrain.EmaBatchNormStatistics(0.7)
    epoch_starts = []
    after = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epoch_starts.append(
        [v.numpy().copy() for v in model.non_trainable_variables]))
    start = [v.numpy().copy() for v in model.non_trainable_variables]
    model.fit(xs, ys, batch_size=8, epochs=2, validation_data=(xs, ys), verbose=0,
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True), record, ema_bn,
                         after])
    # the second epoch trains on from the raw statistics, not the averaged ones
    for got, raw in zip(epoch_starts[1], record.steps[3]):
        np.testing.assert_allclose(got, raw)
    expected = [s.astype(np.float64) for s in start]
    for step in record.steps:
        expected = [0.7 * e + 0.3 * v for e, v in zip(expected, step)]
    for var, want, raw in zip(model.non_trainable_variables, expected, record.steps[-1]):
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-5)  # the average is in the model
        assert not np.allclose(want, raw)  # and it is not the raw statistics


def test_a_stop_in_the_first_epoch_after_a_resume_keeps_the_finished_epochs(tmp_path):
    """Stopped in epoch 2, resumed there, stopped again in that epoch: the backup still says 1
    epoch is done (Keras' own counter would say 0 until the epoch ends, and the next run would
    start over from epoch 1 with mid-epoch weights)."""
    import signal

    from cream_tf import safety

    x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")

    class StopAt(keras.callbacks.Callback):
        def __init__(self, epoch):
            super().__init__()
            self.stop_epoch, self.epoch = epoch, None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == self.stop_epoch and batch == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    def fit_until_stopped(stop_epoch):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", "sparse_categorical_crossentropy")
        backup = retrain.AtomicBackupAndRestore(str(tmp_path / "backup"), double_checkpoint=True)
        with safety.catch_signals(), pytest.raises(safety.Interrupted, match="in epoch 2"):
            model.fit(x, y, batch_size=4, epochs=4, verbose=0,
                      callbacks=[StopAt(stop_epoch), backup])
        return backup.resumed_epoch()

    assert fit_until_stopped(1) == 1  # stopped in epoch 2 (index 1): one epoch done
    assert fit_until_stopped(1) == 1  # resumed at epoch 2 and stopped in it again


def test_a_workdir_retrains_one_architecture(tmp_path):
    """run.json records the network: the same one passes, another is refused naming both."""
    small = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=10)
    first = retrain.retrain_identity([[0], [0], [0], [0], [0]], small, str(tmp_path))
    first.check()  # nothing recorded yet
    first.write()
    same = retrain.retrain_identity(first.identity["architecture"], small, str(tmp_path))
    assert same.check() == first.identity  # the same network as a string
    other = retrain.retrain_identity([[1], [0], [0], [0], [0]], small, str(tmp_path))
    with pytest.raises(ValueError, match=r"holds a retraining with other settings: "
                                         r"architecture \('DS \| MB4 3x3.*there, .* now\)"):
        other.check()
