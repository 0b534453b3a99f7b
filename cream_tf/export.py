"""Shipping a trained child network: `.keras`, TF Serving SavedModel, TFLite (fp32 / int8), ONNX.

Every artifact is standalone: the networks are made of built-in Keras layers only, so nothing here
needs cream_tf (or Python) where the model is served. Every export is written under a temporary
name next to its target and renamed into place when complete, so a crash never leaves a
half-written file or a directory TF Serving would try to load; an existing target is an error
unless `overwrite=True`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import uuid

import numpy as np
import tensorflow as tf
import keras

from cream_tf import internals

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ExportError", "export_keras", "export_saved_model",
    "next_version", "export_tflite", "tflite_predict", "evaluate_tflite", "compare_accuracy",
    "tflite_latency", "median_latency", "export_onnx", "disk_size",
]

# The training pipeline's normalisation, baked into served graphs (one constant for both).
from cream_tf.data import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
METADATA_FILE = os.path.join("assets.extra", "cream_export.json")


class ExportError(ValueError):
    """An export target or argument is not valid."""


# --------------------------------------------------------------------------------------------
# Writing atomically


@contextlib.contextmanager
def _atomic_target(target: str, overwrite: bool, is_dir: bool):
    """Yields a temporary sibling of `target`; renames it onto `target` only on success."""
    target = os.path.abspath(os.fspath(target))
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(target) and not overwrite:
        raise ExportError(f"{target} already exists; pass overwrite=True to replace it")
    stem, ext = os.path.splitext(base) if not is_dir else (base, "")
    tmp = os.path.join(parent, f".{stem}.tmp-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise ExportError(f"export wrote nothing to {tmp}")
        if is_dir and os.path.lexists(target):
            old = os.path.join(parent, f".{stem}.old-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def _image_shape(model) -> tuple:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or any(d is None for d in shape[1:]):
        raise ExportError(f"the model must take RGB images of a fixed size (None, H, W, 3), got "
                          f"input shape {shape}; build it with input_shape=(H, W, 3)")
    return shape[1:]


def _outputs_probabilities(model) -> bool:
    """True when the model already ends in softmax (classifier_activation='softmax')."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"


# --------------------------------------------------------------------------------------------
# .keras


def export_keras(model: keras.Model, path: str, overwrite: bool = False) -> str:
    """Saves `model` as a `.keras` file that loads with `safe_mode=True` without cream_tf.

    This works because child networks are made of built-in layers only (no Lambda, no custom
    class); a model with custom layers is rejected here rather than at the user's load time.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ExportError(f"a Keras file name must end in '.keras', got {path!r}")
    custom = sorted({type(layer).__module__ + "." + type(layer).__name__
                     for layer in internals.all_sublayers(model)
                     if not type(layer).__module__.startswith("keras.")})
    if custom:
        raise ExportError(f"the model has layers that are not built into Keras ({', '.join(custom)})"
                          f"; the .keras file would not load without their code")
    with _atomic_target(path, overwrite, is_dir=False) as tmp:
        model.save(tmp)
    return os.path.abspath(path)


# --------------------------------------------------------------------------------------------
# TF Serving SavedModel


def _save_model(model, path, endpoints: dict):
    """Writes a SavedModel whose signatures are `endpoints` {name: (fn, TensorSpec)}.

    A plain tf.Module that tracks the model's tf.Variables once. (keras.export.ExportArchive in
    Keras 3.15 stores every variable twice, as Keras and as tf variables: a SavedModel twice the
    size of the weights.) The functions run the Keras model, whose layers are all built in, so
    the result loads without cream_tf or Keras.
    """
    root = tf.Module()
    root.model_variables = [v.value for v in model.variables]
    signatures = {}
    for name, (fn, spec) in endpoints.items():
        function = tf.function(fn, input_signature=[spec], autograph=False)
        setattr(root, name, function)
        signatures[name] = function.get_concrete_function()
    tf.saved_model.save(root, path, signatures=signatures)


def next_version(model_dir: str) -> int:
    """1 + the largest integer version folder under `model_dir` (1 when there is none)."""
    versions = [int(d) for d in (os.listdir(model_dir) if os.path.isdir(model_dir) else [])
                if d.isdigit()]
    return max(versions, default=0) + 1


def _check_stats(name, values):
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ExportError(f"{name} must have 3 values (R, G, B), got {values}")
    return values


class _ServingModule:
    """The traced serving functions: preprocessing + model + softmax + top-k, all in-graph."""

    def __init__(self, model, mean, std, class_names, top_k):
        self.model = model
        self.height, self.width, _ = _image_shape(model)
        self.mean = tf.constant(mean, tf.float32)
        self.std = tf.constant(std, tf.float32)
        self.has_softmax = _outputs_probabilities(model)
        self.top_k = top_k
        self.class_names = None if class_names is None else tf.constant(list(class_names))

    def _predict(self, pixels):
        """`pixels`: float32 RGB in [0, 255] at the model's size."""
        x = (pixels / 255.0 - self.mean) / self.std
        y = tf.cast(self.model(x, training=False), tf.float32)
        probabilities = y if self.has_softmax else tf.nn.softmax(y, axis=-1)
        scores, ids = tf.math.top_k(probabilities, k=self.top_k)
        out = {"probabilities": probabilities, "top_k_ids": ids, "top_k_scores": scores}
        if self.class_names is not None:
            out["top_k_names"] = tf.gather(self.class_names, ids)
        return out

    def serve_image(self, image):
        return self._predict(tf.cast(image, tf.float32))

    def serve_bytes(self, image_bytes):
        def decode(data):
            img = tf.io.decode_image(data, channels=3, expand_animations=False)
            img = tf.image.resize(tf.cast(img, tf.float32), (self.height, self.width),
                                  method="bilinear", antialias=True)
            return tf.ensure_shape(img, (self.height, self.width, 3))
        pixels = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec((self.height, self.width, 3),
                                                             tf.float32))
        return self._predict(pixels)


def export_saved_model(model: keras.Model, export_dir: str, model_name: str | None = None,
                       version: int | None = None, class_names=None,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, top_k: int = 5,
                       overwrite: bool = False) -> str:
    """Writes a TF Serving SavedModel to `<export_dir>/<model_name>/<version>/`.

    Signatures (both return `probabilities` (batch, classes), `top_k_ids` int32 and
    `top_k_scores` (batch, k) with k = min(top_k, classes), and `top_k_names` when `class_names`
    are given):
      * `serving_default`: input `image`, uint8 (batch, H, W, 3) RGB at the model's resolution.
      * `serving_bytes`: input `image_bytes`, a string batch of encoded JPEG/PNG/BMP/GIF images,
        decoded and resized (bilinear, antialiased) to H x W in the graph.
    Preprocessing runs in the graph: x / 255, then (x - mean) / std per channel; `mean`, `std`,
    names and shapes are recorded in `assets.extra/cream_export.json`, and a README.md with the
    `tensorflow_model_server` command and REST examples is written next to `saved_model.pb`.

    Args:
      version: positive integer; default the next one after the largest existing version.
        An existing version folder is an error unless `overwrite=True`.
    Returns:
      The version directory.
    """
    height, width, _ = _image_shape(model)
    model_name = model_name or model.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_name):
        raise ExportError(f"model_name must be letters, digits, '_', '.', '-', got {model_name!r}")
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if any(s <= 0 for s in std):
        raise ExportError(f"std must be positive, got {std}")
    num_classes = int(model.output_shape[-1])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ExportError(f"{len(class_names)} class_names given for a model with "
                              f"{num_classes} classes")
    if not isinstance(top_k, int) or top_k < 1:
        raise ExportError(f"top_k must be a positive integer, got {top_k!r}")
    k = min(top_k, num_classes)
    model_dir = os.path.join(os.path.abspath(os.fspath(export_dir)), model_name)
    if version is None:
        version = next_version(model_dir)
    elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"version must be a positive integer (TF Serving ignores other folder "
                          f"names), got {version!r}")
    target = os.path.join(model_dir, str(version))
    if os.path.lexists(target) and not overwrite:
        raise ExportError(f"{target} already exists; pass overwrite=True to replace it (or leave "
                          f"version=None to write version {next_version(model_dir)})")

    module = _ServingModule(model, mean, std, class_names, k)
    endpoints = {
        SERVING_SIGNATURE: (module.serve_image,
                            tf.TensorSpec((None, height, width, 3), tf.uint8, name="image")),
        BYTES_SIGNATURE: (module.serve_bytes,
                          tf.TensorSpec((None,), tf.string, name="image_bytes")),
    }
    gray = np.full((1, height, width, 3), 128, np.uint8)
    example = {key: value.numpy() for key, value in
               module.serve_image(tf.constant(gray)).items()}
    metadata = {
        "format": "cream_tf TF Serving SavedModel", "model_name": model_name, "version": version,
        "signatures": {
            SERVING_SIGNATURE: {"inputs": {"image": {"dtype": "uint8",
                                                     "shape": [-1, height, width, 3]}}},
            BYTES_SIGNATURE: {"inputs": {"image_bytes": {"dtype": "string", "shape": [-1]}}},
        },
        "outputs": {name: {"dtype": "string" if v.dtype == object else str(v.dtype), "shape": [-1] + list(v.shape[1:])}
                    for name, v in example.items()},
        "preprocessing": {"scale": 1.0 / 255.0, "mean": list(mean), "std": list(std),
                          "formula": "(image / 255 - mean) / std", "resize": "bilinear"},
        "num_classes": num_classes, "top_k": k, "class_names": class_names,
    }
    with _atomic_target(target, overwrite, is_dir=True) as tmp:
        _save_model(model, tmp, endpoints)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(_serving_readme(model_dir, metadata, example))
    return target


def _fmt(value, limit=5):
    """A short JSON rendering of an example output row; long rows are cut with '...'."""
    value = value.tolist()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        value = [v.decode() for v in value]
    if isinstance(value, list) and value and isinstance(value[0], float):
        value = [round(v, 6) for v in value]
    if isinstance(value, list) and len(value) > limit:
        return json.dumps(value[:limit])[:-1] + ", ...]"
    return json.dumps(value)


def _serving_readme(model_dir, meta, example) -> str:
    name, version = meta["model_name"], meta["version"]
    h, w = meta["signatures"][SERVING_SIGNATURE]["inputs"]["image"]["shape"][1:3]
    outs = meta["outputs"]
    out_lines = "\n".join(f"| `{o}` | {d['dtype']} | {tuple(d['shape'])} |" for o, d in outs.items())
    row = ", ".join(f'"{o}": {_fmt(example[o][0])}' for o in outs)
    cols = ", ".join(f'"{o}": [{_fmt(example[o][0])}]' for o in outs)
    mean, std = meta["preprocessing"]["mean"], meta["preprocessing"]["std"]
    return f"""# {name}, version {version}: TF Serving export (written by cream_tf)

TF Serving watches `{model_dir}` and serves the highest integer version folder.

## Serve

```sh
tensorflow_model_server --port=8500 --rest_api_port=8501 \\
  --model_name={name} --model_base_path={model_dir}
# or with Docker:
docker run --rm -p 8500:8500 -p 8501:8501 \\
  --mount type=bind,source={model_dir},target=/models/{name} \\
  -e MODEL_NAME={name} -t tensorflow/serving
```

Status: `GET http://localhost:8501/v1/models/{name}`; signatures:
`GET http://localhost:8501/v1/models/{name}/metadata`.

## Signatures

| signature | input | dtype | shape |
|---|---|---|---|
| `{SERVING_SIGNATURE}` | `image` | uint8 RGB, 0..255 | (-1, {h}, {w}, 3) |
| `{BYTES_SIGNATURE}` | `image_bytes` | string (encoded JPEG/PNG) | (-1,) |

Both return:

| output | dtype | shape |
|---|---|---|
{out_lines}

Preprocessing is inside the graph: `(image / 255 - mean) / std` with mean {mean} and std {std}
(RGB). `{BYTES_SIGNATURE}` decodes and resizes (bilinear, antialiased) to {h}x{w} first. Send raw
pixels, not normalised ones.

## REST

`POST http://localhost:8501/v1/models/{name}:predict` (or `.../versions/{version}:predict`).

Row form, one image per instance (each image a {h} x {w} x 3 nested list of 0..255 ints):

```json
{{"signature_name": "{SERVING_SIGNATURE}", "instances": [[[[128, 128, 128], ...], ...]]}}
```

Response for that uniform gray image (real values, long lists cut):

```json
{{"predictions": [{{{row}}}]}}
```

Column form:

```json
{{"signature_name": "{SERVING_SIGNATURE}", "inputs": {{"image": [[[[128, 128, 128], ...], ...]]}}}}
```

```json
{{"outputs": {{{cols}}}}}
```

Encoded images (base64 in `{{"b64": ...}}`):

```json
{{"signature_name": "{BYTES_SIGNATURE}", "instances": [{{"b64": "iVBORw0KGgo..."}}]}}
```

In Python:

```python
import base64, json, numpy as np, requests
image = np.zeros(({h}, {w}, 3), np.uint8)  # your RGB image at {h}x{w}
r = requests.post("http://localhost:8501/v1/models/{name}:predict",
                  json={{"instances": [image.tolist()]}})
print(r.json()["predictions"][0]["top_k_ids"])
png = open("cat.png", "rb").read()
r = requests.post("http://localhost:8501/v1/models/{name}:predict",
                  json={{"signature_name": "{BYTES_SIGNATURE}",
                        "instances": [{{"b64": base64.b64encode(png).decode()}}]}})
```

## Check without a server

```sh
saved_model_cli show --dir {model_dir}/{version} --tag_set serve --signature_def {SERVING_SIGNATURE}
python -c "import numpy as np; np.save('x.npy', np.full((1, {h}, {w}, 3), 128, np.uint8))"
saved_model_cli run --dir {model_dir}/{version} --tag_set serve \\
  --signature_def {SERVING_SIGNATURE} --inputs image=x.npy
```
"""


# --------------------------------------------------------------------------------------------
# TFLite


def _batches_of_one(data, limit):
    """Yields up to `limit` float32 arrays of shape (1, H, W, 3) from an array or an iterable."""
    count = 0
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    if isinstance(data, np.ndarray):
        array = data
        data = (array[i:i + 1] for i in range(len(array)))
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]  # (images, labels)
        batch = np.asarray(batch, np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        for i in range(len(batch)):
            if count >= limit:
                return
            yield batch[i:i + 1]
            count += 1


def export_tflite(model: keras.Model, path: str, quantization: str | None = None,
                  representative_data=None, num_calibration_samples: int = 200,
                  overwrite: bool = False) -> str:
    """Converts `model` to a `.tflite` file (same input as the Keras model: preprocessed float).

    Args:
      quantization: None for float32, or 'int8' for full-integer quantization: int8 weights,
        activations, input and output (`input_details()[0]['quantization']` gives the scale and
        zero point), using only TFLITE_BUILTINS_INT8 ops, as integer-only accelerators need.
      representative_data: for 'int8': preprocessed images, an array (N, H, W, 3), a
        `tf.data.Dataset` or an iterable of batches (or (images, labels) pairs), drawn from the
        data the model will see; up to `num_calibration_samples` are used to set the ranges.
    """
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ExportError(f"a TFLite file name must end in '.tflite', got {path!r}")
    if quantization not in (None, "int8"):
        raise ExportError(f"quantization must be None (float32) or 'int8', got {quantization!r}")
    _image_shape(model)
    if os.path.lexists(path) and not overwrite:
        raise ExportError(f"{os.path.abspath(path)} already exists; pass overwrite=True to "
                          f"replace it")
    if quantization == "int8" and representative_data is None:
        raise ExportError("int8 quantization needs representative_data: a few hundred "
                          "preprocessed images like those the model will see")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(path)}.work-", dir=parent) as work:
        saved = os.path.join(work, "saved_model")
        _save_model(model, saved, {"serving_default": (
            lambda image: model(image, training=False),
            tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="image"))})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantization == "int8":
            samples = list(_batches_of_one(representative_data, num_calibration_samples))
            if not samples:
                raise ExportError("representative_data gave no images")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([s] for s in samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    with _atomic_target(path, overwrite, is_dir=False) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return os.path.abspath(path)


def _interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter  # the successor of tf.lite
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=os.fspath(path), num_threads=num_threads)


def tflite_predict(path: str, images, num_threads: int = 1) -> np.ndarray:
    """Float outputs of a `.tflite` model on preprocessed `images`, one image at a time.

    int8 models get their input quantized and their output dequantized with the scales stored
    in the file, so the result compares directly with the Keras model's output.
    """
    interpreter = _interpreter(path, num_threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    images = np.asarray(images, np.float32)
    if images.shape[1:] != tuple(inp["shape"][1:]):
        raise ExportError(f"images of shape {images.shape[1:]} given to a TFLite model that takes "
                          f"{tuple(inp['shape'][1:])}")
    interpreter.resize_tensor_input(inp["index"], [1] + list(images.shape[1:]))
    interpreter.allocate_tensors()
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    results = []
    for image in images:
        x = image[None]
        if inp["dtype"] != np.float32:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            y = (y.astype(np.float32) - out_zero) * out_scale
        results.append(y[0])
    return np.stack(results)


def _labelled_batches(images, labels, batch_size=256):
    """(float32 images, int labels) numpy batches from arrays (cut into `batch_size`), or from an
    iterable of batches (e.g. a batched tf.data.Dataset) when `labels` is None."""
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        for start in range(0, len(labels), batch_size):
            yield (np.asarray(images[start:start + batch_size], np.float32),
                   labels[start:start + batch_size])
        return
    for x, y in images:
        yield np.asarray(x, np.float32), np.asarray(y).reshape(-1)


def evaluate_tflite(path: str, images, labels=None, num_threads: int = 1) -> float:
    """Top-1 accuracy of a `.tflite` model on preprocessed `images` with integer `labels`, or on
    an iterable of (images, labels) batches (memory bounded by the batch)."""
    correct = total = 0
    for x, y in _labelled_batches(images, labels):
        correct += int(np.sum(tflite_predict(path, x, num_threads).argmax(-1) == y))
        total += len(y)
    return correct / total if total else float("nan")


def compare_accuracy(model: keras.Model, tflite_paths: dict, images, labels=None,
                     num_threads: int = 1) -> dict:
    """Held-out top-1 of the Keras model and of each TFLite file, and their agreement with Keras.

    `images` and `labels` are arrays, or `images` is an iterable of (images, labels) batches such
    as a batched tf.data.Dataset and `labels` is None: then memory is bounded by the batch, not
    by the held-out set. Returns {'keras': {'accuracy': a}, name: {'accuracy': a, 'agreement':
    f}, ...}, where agreement is the fraction of images whose top-1 class equals the Keras
    model's.
    """
    counts = {"keras": 0, **{name: [0, 0] for name in tflite_paths}}
    total = 0
    for x, y in _labelled_batches(images, labels):
        reference = np.asarray(model.predict_on_batch(x)).argmax(-1)
        counts["keras"] += int(np.sum(reference == y))
        for name, path in tflite_paths.items():
            predicted = tflite_predict(path, x, num_threads).argmax(-1)
            counts[name][0] += int(np.sum(predicted == y))
            counts[name][1] += int(np.sum(predicted == reference))
        total += len(y)
    if not total:
        raise ExportError("compare_accuracy got no images")
    report = {"keras": {"accuracy": counts["keras"] / total}}
    for name in tflite_paths:
        report[name] = {"accuracy": counts[name][0] / total, "agreement": counts[name][1] / total}
    return report


def tflite_latency(path: str, runs: int = 100, warmup: int = 10, num_threads: int = 1) -> float:
    """Median seconds of one batch-1 `invoke()` of a `.tflite` model (random input)."""
    interpreter = _interpreter(path, num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if inp["dtype"] == np.float32:
        x = rng.standard_normal(inp["shape"]).astype(np.float32)
    else:
        x = rng.integers(-128, 128, inp["shape"]).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x)
    return median_latency(interpreter.invoke, runs, warmup)


def median_latency(fn, runs: int = 100, warmup: int = 10) -> float:
    """Median seconds of `fn()` over `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# ONNX


def export_onnx(model: keras.Model, path: str, opset_version: int | None = None,
                overwrite: bool = False) -> str:
    """Writes `model` as ONNX through tf2onnx (input `image`, preprocessed float, NHWC).

    Needs the optional dependencies: `pip install "cream_tf[onnx]"` (tf2onnx, onnx;
    onnxruntime to run the result). The model must use the float32 dtype policy.
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ExportError(f"an ONNX file name must end in '.onnx', got {path!r}")
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the 'onnx' extra: pip install \"cream_tf[onnx]\" "
                          f"(tf2onnx and onnx; missing: {e.name})") from e
    if model.dtype_policy.name != "float32":
        raise ExportError(f"ONNX export needs the float32 dtype policy, the model uses "
                          f"{model.dtype_policy.name!r}: rebuild it under float32 and copy weights")
    spec = [tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="image")]
    with _atomic_target(path, overwrite, is_dir=False) as tmp:
        model.export(tmp, format="onnx", verbose=False, input_signature=spec,
                     opset_version=opset_version)
    return os.path.abspath(path)
