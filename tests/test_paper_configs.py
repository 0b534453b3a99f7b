"""The paper's ImageNet configs end to end through run.py: configs/imagenet_table1.flags and
configs/imagenet_table3.flags with their space, resolution, teacher, prior, board and FLOPs
range as written, on a small generated ImageNet-layout image folder at 224 px, under
`--strategy=mirrored` over 2 logical CPU devices; only step counts, batch sizes and data are cut.

run.py has no flag or environment variable for logical devices: `cli.make_strategy('mirrored')`
mirrors over `tf.config.list_logical_devices` (GPUs, else CPUs), so the child process splits its
CPU in two before run.py starts (the prelude below), as tests/conftest.py does in-process.

Slow (the depth-6, 224 px Table 1 supernet takes minutes to trace its first step on 2 cores, and
the run needs several GB of memory); run alone with
`python -m pytest -m slow tests/test_paper_configs.py -p no:xdist`.
"""
import io
import json
import os
import re
import time

import numpy as np
import pytest

from conftest import ROOT, run_py

CONFIGS = ["configs/imagenet_table1.flags", "configs/imagenet_table3.flags"]

# ImageNet layout: PATH/train/<wnid>/<file>.JPEG and PATH/val/<wnid>/<file>.JPEG. With a val but no
# test folder, cream_tf reports val as test and carves its own val from train (10%, file-name hash),
# as it does for imagenet2012.
CLASSES = ["n01440764", "n01443537", "n01484850", "n01491361"]
TRAIN_PER_CLASS, VAL_PER_CLASS = 12, 3
SIZES = [(64, 80), (80, 64), (72, 72)]  # (height, width), none of them 224: resizing is exercised

# Everything that makes the paper's runs long, cut down. Not touched: space, layout, depth,
# resolution, width, seed, strategy, lr, weight_decay, board_size, board_images, board_gap,
# teacher, meta_lr, flops_min, flops_max, prior, retrain_lr, retrain_dropout, ema_decay, model_name.
OVERRIDES = [
    "--batch_size=8",             # 4 per replica: the least board_images (4) and meta_slice allow
    "--search_epochs=2", "--warmup_epochs=1", "--steps_per_epoch=3",  # 3 warm-up + 3 distill steps
    "--meta_interval=2",          # one meta-gradient update (step 4) after the warm-up
    "--select_bn_batches=2",
    "--retrain_epochs=1", "--retrain_warmup_epochs=0",  # 3 warm-up epochs need > 3 epochs
    "--retrain_batch_size=8",
]

# Two logical CPU devices in the child, before anything initialises TensorFlow's runtime.
TWO_CPUS = """
import tensorflow as tf
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
"""


def run(args, cwd, prelude=""):
    return run_py(args, cwd, prelude=prelude, timeout=3600)


def read(path):
    with open(path) as f:
        return json.load(f)


def read_flags(path):
    values = {}
    for line in open(os.path.join(ROOT, path)).read().splitlines():
        if line.startswith("--"):
            name, value = line[2:].split("=", 1)
            values[name] = value
    return values


def image(label, index, size):
    """A JPEG whose colour depends on the class, with per-image noise."""
    from PIL import Image

    rng = np.random.default_rng(1000 * label + index)
    base = np.array([[255, 40, 40], [40, 200, 40], [40, 40, 255], [220, 220, 40]][label % 4])
    pixels = np.clip(base + rng.normal(0, 40, size + (3,)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_folder(root):
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for label, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                name = f"{wnid}_{i:05d}.JPEG" if split == "train" else \
                    f"ILSVRC2012_val_{label * count + i + 1:08d}.JPEG"
                (folder / name).write_bytes(image(label, i + (1000 if split == "val" else 0),
                                                  SIZES[i % len(SIZES)]))
    return root


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imagenet"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
@pytest.mark.parametrize("config", CONFIGS, ids=os.path.basename)
def test_paper_config_runs_end_to_end(config, imagenet_folder, tmp_path, record_property):
    from cream_tf import data as data_lib

    paper = read_flags(config)
    assert paper["mode"] == "all" and paper["teacher"] == "meta"
    num_classes = len(CLASSES)
    # the folder loads as ImageNet does: val carved from train, the val folder reported as test
    _, info = data_lib.load(f"folder:{imagenet_folder}", 224)
    assert info.num_classes == num_classes
    assert info.split_sizes["val"] >= 1 and info.split_sizes["test"] == num_classes * VAL_PER_CLASS

    workdir = tmp_path / "w"
    args = [f"--flags={config}", f"--workdir={workdir}", f"--dataset=folder:{imagenet_folder}",
            "--strategy=mirrored", *OVERRIDES]
    started = time.time()
    result = run(args, ROOT, prelude=TWO_CPUS)
    record_property("wall_seconds", round(time.time() - started, 1))
    if result.returncode != 0:  # pytest.fail prints the text whole (an assert message is cut)
        pytest.fail(f"run.py exited with {result.returncode}\n--- stdout (end)\n"
                    f"{result.stdout[-3000:]}\n--- stderr (end)\n{result.stderr[-8000:]}")
    out = result.stdout
    assert "== search" in out and "== select" in out and "== retrain" in out and "== export" in out
    summary_text = out[out.index("== summary"):]
    assert f"({num_classes} classes)" in summary_text, summary_text

    # the run used the flag file's space and search settings, with only the cuts above
    run_config = read(workdir / "run_config.json")
    for name in ("space", "layout", "teacher", "prior", "board_size", "board_images"):
        assert str(run_config[name]) == paper[name], (name, run_config[name], paper[name])
    assert run_config["depth"] == int(paper["depth"])
    assert run_config["resolution"] == 224 == int(paper["resolution"])
    assert run_config["width"] == float(paper["width"])
    assert run_config["flops_min"] == float(paper["flops_min"])
    assert run_config["flops_max"] == float(paper["flops_max"])
    assert run_config["dataset"] == f"folder:{imagenet_folder}" and run_config["num_classes"] == 0

    # search: a finished checkpoint (all 6 steps), its signature, the board and its history
    import tensorflow as tf

    search = workdir / "search"
    latest = tf.train.latest_checkpoint(str(search / "checkpoints"))
    assert latest and int(re.search(r"-(\d+)$", latest).group(1)) == 6, latest
    searched = read(search / "search.json")["config"]
    assert searched["teacher"] == "meta" and searched["batch_size"] == 8
    assert searched["epochs"] == 2 and searched["steps_per_epoch"] == 3
    board = read(search / "board.json")
    assert board and len(board) <= int(paper["board_size"])
    assert all("paper" in entry for entry in board)
    assert read(search / "board_history.json")
    logs = search / "logs"
    assert any("tfevents" in name for _, _, names in os.walk(logs) for name in names)

    # selection: the chosen path is a valid path of the paper's space, inside its FLOPs range
    from cream_tf import arch as arch_lib
    from cream_tf import flops
    from cream_tf.space import Space

    space = Space(paper["space"], paper["layout"], depth=int(paper["depth"]), resolution=224,
                  width=float(paper["width"]), num_classes=num_classes)
    selection = read(workdir / "select" / "selection.json")
    best = selection["best"]
    assert best["in_range"] and best["accuracy"] is not None
    chosen = arch_lib.path_to_arch(best["path"], space)  # raises on an invalid path
    macs = flops.cost_table(space).path_macs(best["path"])
    low, high = float(paper["flops_min"]) * 1e6, float(paper["flops_max"]) * 1e6
    assert macs == best["macs"] and low <= macs <= high, (macs, low, high)

    # retrain: the selected architecture, retrained for one epoch, both models saved
    retrain = workdir / "retrain"
    retrained = read(retrain / "result.json")
    assert retrained["epochs"] == 1 and retrained["test_accuracy"] is not None
    assert (retrain / "final.keras").is_file() and (retrain / "best.keras").is_file()
    assert not (retrain / "backup").exists()

    summary = read(workdir / "summary.json")
    assert summary["architecture"] == chosen.to_paper()
    assert summary["macs"] == macs and 0 < summary["macs"] <= high

    # export: Keras file, TF Serving SavedModel (version 1), float and int8 TFLite, the report
    name = paper["model_name"]
    export = workdir / "export"
    version_dir = export / name / "1"
    assert (export / f"{name}.keras").is_file()
    assert (version_dir / "saved_model.pb").is_file()
    assert (export / f"{name}.tflite").is_file() and (export / f"{name}_int8.tflite").is_file()
    report = read(export / "export_report.json")
    assert report["held_out_split"] == "test"
    assert set(report["accuracy"]) >= {"tflite_fp32", "tflite_int8"}
    assert not (export / ".export_progress.json").exists()
    pytest.importorskip("matplotlib")
    assert (workdir / "architecture.png").stat().st_size > 1000
    assert (workdir / "board.png").stat().st_size > 1000

    # the exported models answer on a generated image of another size: one row of num_classes
    import keras

    from cream_tf import export as export_lib

    loaded = tf.saved_model.load(str(version_dir))
    jpeg = image(1, 7, (64, 80))
    from_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant([jpeg]))
    probabilities = from_bytes["probabilities"].numpy()
    assert probabilities.shape == (1, num_classes)
    np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-4)
    assert {n.decode() for n in from_bytes["top_k_names"].numpy()[0]} <= set(CLASSES)
    pixels = tf.image.resize(tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32),
                             (224, 224), antialias=True)
    from_pixels = loaded.signatures["serving_default"](
        image=tf.cast(tf.round(tf.clip_by_value(pixels, 0, 255)), tf.uint8)[None])
    assert from_pixels["probabilities"].shape == (1, num_classes)
    # the Keras file and the float TFLite file are the same network as the SavedModel
    x = data_lib.normalize(tf.round(tf.clip_by_value(pixels, 0, 255)) / 255.0)[None].numpy()
    model = keras.saving.load_model(str(export / f"{name}.keras"), compile=False, safe_mode=True)
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (1, num_classes)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(),
                               from_pixels["probabilities"].numpy(), atol=1e-4)
    tflite = export_lib.tflite_predict(str(export / f"{name}.tflite"), x)
    assert tflite.shape == (1, num_classes)
    np.testing.assert_allclose(tflite, logits, atol=1e-3)
