"""Datasets and input pipelines for search, selection and retraining.

Two layers, kept apart so each can be tested and reused:

* `load(spec, resolution, ...)` turns a dataset spec into raw, unbatched `tf.data` splits of
  `(uint8 HWC RGB image, int32 label)` plus a `DatasetInfo`. Raw images keep their own size (TFDS
  and folder data) and stay uint8 so shuffle buffers and caches are 4x smaller than float32.
  Specs: ``tfds:NAME`` (prepared TFDS data, offline), ``folder:PATH`` (one folder per class),
  ``digits`` (scikit-learn's bundled 8x8 digits, offline) and ``synthetic[:CLASSES]``.
* `train_pipeline` / `eval_pipeline` turn a raw split into float32, normalised
  `(resolution, resolution, 3)` images: random resized crop, flip, colour jitter or RandAugment,
  random erasing for training; resize and centre crop for evaluation. All augmentation runs in
  `tf.data` map functions with stateless random ops seeded per example, so a seeded pipeline gives
  the same images on every run, however many threads `AUTOTUNE` uses.

Splits: `val` is the held-out split that search (the board's meta slice) and final selection may
look at; `test` is only for the final report. When a dataset has no validation split, `val` is
carved from train, deterministically and disjointly (it does not change with the training seed).
When a dataset has a validation split but no test split (ImageNet), that validation split is
reported as `test` and `val` is carved from train, so selection never sees the reported split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from cream_tf.errors import InputError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "KINDS", "DatasetInfo", "Splits", "Augment", "DataError",
    "check_val_fraction", "load", "normalize", "train_pipeline", "eval_pipeline", "search_inputs",
    "random_resized_crop", "color_jitter", "rand_augment", "random_erasing", "center_crop",
]

# Normalisation of RGB pixel values scaled to [0, 1]: (x / 255 - MEAN) / STD. One constant for
# the pipelines here and for exporters that bake preprocessing into a served model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

KINDS = ("tfds:NAME", "folder:PATH", "digits", "synthetic[:CLASSES]")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE


class DataError(InputError):
    """A dataset spec, folder or TFDS dataset that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset is.

    Attributes:
      spec: the spec it was loaded from.
      num_classes, class_names: the label set (labels are 0..num_classes-1).
      split_sizes: examples per split ('train', 'val', 'test'); None where unknown.
      val_source, test_source: where each split came from (e.g. "train[:5000] (carved)").
      image_shape: raw (H, W, 3) when all images share it, else None.
      hflip: whether horizontal flips keep labels (False for digits).
      crop_scale: recommended area range of the random resized crop.
      eval_crop_pct: recommended centre-crop fraction for evaluation (1.0 for images already at
        the network's resolution).
      randaugment: whether the retrain recipe's RandAugment suits the data (False for digits:
        magnitude-9 translations, rotations and inversions wreck upsampled 8x8 digits, and
        short runs on them learn far better without).
      search_augment: whether the search recipe (crop, flip, colour jitter, erasing) suits a
        supernet on this data (False for digits: on so few, so small images it kept a supernet
        on random paths from learning, while a single fixed path learns under it either way).
        False: no augmentation.
    """

    spec: str
    num_classes: int
    class_names: tuple
    split_sizes: dict
    val_source: str
    test_source: Optional[str]
    image_shape: Optional[tuple] = None
    hflip: bool = True
    crop_scale: tuple = (0.08, 1.0)
    eval_crop_pct: float = 0.875
    randaugment: bool = True
    search_augment: bool = True

    @property
    def shuffle_buffer(self) -> int:
        """A shuffle buffer that fits in memory: whole small datasets, 2048 large images."""
        n = self.split_sizes.get("train")
        small = self.image_shape is not None and self.image_shape[0] * self.image_shape[1] <= 96 ** 2
        cap = 50_000 if small else 2048
        return min(n, cap) if n else cap


@dataclasses.dataclass(frozen=True)
class Splits:
    """Raw unbatched splits of `(uint8 HWC RGB image, int32 label)`; `test` may be None."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: Optional[tf.data.Dataset]


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------

def check_val_fraction(val_fraction: float):
    """Raises `DataError` unless 0 < val_fraction < 0.5: some training data must stay."""
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5), got {val_fraction!r}")


def load(spec: str, resolution: int, data_dir: Optional[str] = None, seed: int = 0,
         val_fraction: float = 0.1) -> tuple:
    """Loads a dataset spec into raw splits.

    Args:
      spec: 'tfds:NAME' (NAME may carry a config/version, e.g. 'tfds:imagenet2012:5.1.0'),
        'folder:PATH', 'digits' or 'synthetic' / 'synthetic:CLASSES'.
      resolution: network input size; digits and synthetic images are made at this size.
      data_dir: TFDS data directory (TFDS's default when None).
      seed: file-order shuffling of large TFDS train splits (splits themselves never change).
      val_fraction: fraction of train carved off as `val` when the dataset has no validation split.

    Returns:
      (Splits, DatasetInfo).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"a dataset spec is expected; valid kinds: {', '.join(KINDS)}")
    check_val_fraction(val_fraction)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise DataError(f"resolution must be an int >= 8, got {resolution!r}")
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind == "tfds" and arg:
        return _load_tfds(spec, arg, data_dir, seed, val_fraction)
    if kind == "folder" and arg:
        return _load_folder(spec, arg, val_fraction)
    if kind == "digits" and not arg:
        return _load_digits(spec, resolution, val_fraction)
    if kind == "synthetic":
        return _load_synthetic(spec, arg, resolution)
    raise DataError(f"unknown dataset spec {spec!r}; valid kinds: {', '.join(KINDS)}")


def _to_rgb_uint8(image):
    """Any decoded image (H, W, 1|3|4), any integer or float dtype -> uint8 RGB."""
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise DataError(f"images must have 1, 3 or 4 channels, got shape {image.shape}")
    return image


def _supervised(image, label):
    return _to_rgb_uint8(image), tf.cast(label, tf.int32)


# -- TFDS ------------------------------------------------------------------------------------

def _carve(n_train: int, val_fraction: float) -> int:
    return max(1, int(round(n_train * val_fraction)))


def tfds_split_plan(sizes: dict, val_fraction: float) -> dict:
    """Which TFDS split strings become train/val/test, from the dataset's split sizes.

    Returns {'train': str, 'val': str, 'test': str | None} (TFDS slicing syntax). `val` is carved
    from the end of train when the dataset has no validation split, or when its validation split
    is the only held-out one (then it is the test split); `test` is carved from the start of train
    when the dataset has neither.
    """
    if "train" not in sizes:
        raise DataError(f"the dataset has no 'train' split; its splits: {', '.join(sizes) or 'none'}")
    validation = next((s for s in ("validation", "val") if s in sizes), None)
    if "test" in sizes and validation:
        return {"train": "train", "val": validation, "test": "test"}
    n = sizes["train"]
    k = _carve(n, val_fraction)
    test = "test" if "test" in sizes else validation
    if test is None:  # only train: carve test from the start and val from the end
        if n < 3:
            raise DataError(f"train has {n} examples; at least 3 are needed to carve val and test")
        return {"train": f"train[{k}:{n - k}]", "val": f"train[{n - k}:]", "test": f"train[:{k}]"}
    if n < 2:
        raise DataError(f"train has {n} examples; at least 2 are needed to carve a val split")
    return {"train": f"train[:{n - k}]", "val": f"train[{n - k}:]", "test": test}


def _load_tfds(spec, name, data_dir, seed, val_fraction):
    import tensorflow_datasets as tfds

    where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    how = (f"prepare it once on a machine with network access, e.g. "
           f"`python -m tensorflow_datasets.scripts.download_and_prepare --datasets={name} "
           f"--data_dir=<dir>` (or tfds.builder({name!r}, data_dir=<dir>).download_and_prepare()), "
           f"then copy <dir> here and pass --data_dir")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(f"TFDS dataset {name!r} (spec {spec!r}) is unknown: {e}") from None
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise DataError(f"TFDS dataset {name!r} has no (image, label) supervised keys")
    label_feature = info.features[info.supervised_keys[1]]
    if not hasattr(label_feature, "num_classes"):
        raise DataError(f"TFDS dataset {name!r}: label feature {info.supervised_keys[1]!r} is not "
                        f"a ClassLabel")
    sizes = {k: v.num_examples for k, v in info.splits.items()}
    if sizes:
        plan = tfds_split_plan(sizes, val_fraction)
        def size_of(s):
            return _slice_size(s, sizes)
    else:
        # Split sizes unknown (data not prepared, or tfds.testing.mock_data): read train and test,
        # carve val as every k-th example of train (disjoint by index). Preparedness is checked
        # by tfds.load(download=False) below.
        plan = {"train": "train", "val": None, "test": "test"}
        def size_of(s):
            return None
    others = [plan[k] for k in ("val", "test") if plan[k]]
    try:
        # Train reads its files in a seeded random order when val is sliced off by TFDS (slices
        # fix membership, so the split stays the same); in the fallback, val is carved by
        # position, so the order must not depend on the seed.
        train = tfds.load(name, split=plan["train"], data_dir=data_dir, download=False,
                          as_supervised=True, shuffle_files=bool(sizes),
                          read_config=tfds.ReadConfig(shuffle_seed=seed))
        loaded = [train] + tfds.load(name, split=others, data_dir=data_dir, download=False,
                                     as_supervised=True, shuffle_files=False)
    except AssertionError as e:
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where} (no download is "
                        f"attempted offline); {how}. ({e})") from None
    loaded = [ds.map(_supervised, num_parallel_calls=AUTOTUNE) for ds in loaded]
    train = loaded[0]
    if plan["val"]:
        val = loaded[1]
        test = loaded[2] if plan["test"] else None
        val_source = plan["val"] + (" (carved from train)" if plan["val"].startswith("train[") else "")
    else:
        every = max(2, int(round(1 / val_fraction)))
        indexed = train.enumerate()
        val = indexed.filter(lambda i, ex: i % every == 0).map(lambda i, ex: ex)
        train = indexed.filter(lambda i, ex: i % every != 0).map(lambda i, ex: ex)
        test = loaded[1]
        val_source = f"every {every}th example of train (carved; split sizes unknown)"
    image_shape = tuple(info.features[info.supervised_keys[0]].shape)
    image_shape = image_shape[:2] + (3,) if None not in image_shape[:2] else None
    info_out = DatasetInfo(
        spec=spec, num_classes=int(label_feature.num_classes),
        class_names=tuple(label_feature.names),
        split_sizes={k: size_of(plan[k]) if plan[k] else None for k in ("train", "val", "test")},
        val_source=val_source, test_source=plan["test"], image_shape=image_shape,
        eval_crop_pct=1.0 if image_shape and image_shape[0] <= 64 else 0.875,
        crop_scale=(0.25, 1.0) if image_shape and image_shape[0] <= 64 else (0.08, 1.0))
    return Splits(train, val, test), info_out


def _slice_size(split: str, sizes: dict) -> int:
    if "[" not in split:
        return sizes[split]
    name, rng = split[:-1].split("[")
    n = sizes[name]
    lo, hi = rng.split(":")
    lo = int(lo) if lo else 0
    hi = int(hi) if hi else n
    return hi - lo


# -- folders ---------------------------------------------------------------------------------

_FOLDER_LAYOUT = ("expected PATH/<class>/<image> (one folder per class; val and test are carved "
                  "from it) or PATH/<split>/<class>/<image> with split train and val|validation "
                  "and/or test, images ending in " + ", ".join(IMAGE_EXTENSIONS))


def _class_files(root: str) -> dict:
    """{class name: sorted image paths} for the class folders directly under root."""
    result = {}
    for entry in sorted(os.listdir(root)):
        d = os.path.join(root, entry)
        if os.path.isdir(d):
            files = sorted(os.path.join(d, f) for f in os.listdir(d)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and
                           os.path.isfile(os.path.join(d, f)))
            if files:
                result[entry] = files
    return result


def _bucket(path: str, root: str) -> float:
    """A stable number in [0, 1) per file: carving by hash keeps splits fixed as files are added."""
    digest = hashlib.md5(os.path.relpath(path, root).encode()).hexdigest()
    return int(digest[:8], 16) / 2 ** 32


def _load_folder(spec, path, val_fraction):
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root!r} does not exist or is not a directory; "
                        f"{_FOLDER_LAYOUT}")
    split_dirs = {s: os.path.join(root, s) for s in ("train", "val", "validation", "test")
                  if os.path.isdir(os.path.join(root, s))}
    if "train" in split_dirs:
        per_split = {s: _class_files(d) for s, d in split_dirs.items()}
        if not per_split["train"]:
            raise DataError(f"{split_dirs['train']!r} has no class folders with images; "
                            f"{_FOLDER_LAYOUT}")
        classes = sorted(per_split["train"])
        for s, files in per_split.items():
            extra = sorted(set(files) - set(classes))
            if extra:
                raise DataError(f"split folder {split_dirs[s]!r} has classes {extra} that "
                                f"{split_dirs['train']!r} lacks; every split needs the same classes")
        val_name = "val" if "val" in per_split else ("validation" if "validation" in per_split else None)
        lists = {"train": per_split["train"]}
        sources = {}
        if val_name and "test" in per_split:
            lists.update(val=per_split[val_name], test=per_split["test"])
            sources = {"val": val_name, "test": "test"}
        else:
            test_name = "test" if "test" in per_split else val_name
            carved = {"train": {}, "val": {}}
            for c, files in per_split["train"].items():
                for f in files:
                    carved["val" if _bucket(f, root) < val_fraction else "train"].setdefault(c, []).append(f)
            lists = {"train": carved["train"], "val": carved["val"]}
            sources = {"val": "train (carved by file-name hash)"}
            if test_name:
                lists["test"] = per_split[test_name]
                sources["test"] = test_name
    else:
        files = _class_files(root)
        if len(files) < 2:
            found = f"only class folder {list(files)}" if files else "no class folders with images"
            raise DataError(f"dataset folder {root!r} has {found}; {_FOLDER_LAYOUT}")
        classes = sorted(files)
        lists = {"train": {}, "val": {}, "test": {}}
        for c, fs in files.items():
            for f in fs:
                u = _bucket(f, root)
                s = "val" if u < val_fraction else ("test" if u < 2 * val_fraction else "train")
                lists[s].setdefault(c, []).append(f)
        sources = {"val": "carved by file-name hash", "test": "carved by file-name hash"}
    index = {c: i for i, c in enumerate(classes)}

    def make(split_lists):
        paths = [f for c in classes for f in split_lists.get(c, [])]
        labels = [index[c] for c in classes for _ in split_lists.get(c, [])]
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                                 tf.constant(labels, tf.int32)))
        return ds.map(_read_image, num_parallel_calls=AUTOTUNE), len(paths)

    train, n_train = make(lists["train"])
    val, n_val = make(lists["val"])
    if n_train == 0 or n_val == 0:
        raise DataError(f"dataset folder {root!r}: too few images to carve a val split "
                        f"(train {n_train}, val {n_val}); add images or pass a larger val_fraction")
    test, n_test = make(lists["test"]) if "test" in lists else (None, None)
    info = DatasetInfo(spec=spec, num_classes=len(classes), class_names=tuple(classes),
                       split_sizes={"train": n_train, "val": n_val, "test": n_test},
                       val_source=sources["val"], test_source=sources.get("test"))
    return Splits(train, val, test), info


def _read_image(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3]), label


# -- digits and synthetic --------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2


def _load_digits(spec, resolution, val_fraction):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) * (255.0 / 16.0))[..., None]  # 0..16 -> 0..255
    labels = digits.target.astype(np.int32)
    idx = np.arange(len(labels))
    # Fixed splits (random_state 0, stratified): they never change with the training seed.
    rest, test_idx = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, random_state=0,
                                      stratify=labels)
    train_idx, val_idx = train_test_split(rest, test_size=val_fraction, random_state=0,
                                          stratify=labels[rest])
    resized = tf.image.resize(images, [resolution, resolution], method="bilinear")
    resized = tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)
    resized = tf.image.grayscale_to_rgb(resized).numpy()

    def make(ix):
        return tf.data.Dataset.from_tensor_slices((resized[ix], labels[ix]))

    info = DatasetInfo(spec=spec, num_classes=10, class_names=tuple(str(i) for i in range(10)),
                       split_sizes={"train": len(train_idx), "val": len(val_idx),
                                    "test": len(test_idx)},
                       val_source=f"train ({val_fraction:g}, stratified, fixed)",
                       test_source=f"{DIGITS_TEST_FRACTION:g} of all (stratified, fixed)",
                       image_shape=(resolution, resolution, 3), hflip=False,
                       crop_scale=(0.5, 1.0), eval_crop_pct=1.0, randaugment=False,
                       search_augment=False)
    return Splits(make(train_idx), make(val_idx), make(test_idx)), info


SYNTHETIC_SIZES = {"train": 1024, "val": 256, "test": 256}


def _load_synthetic(spec, arg, resolution):
    if arg:
        try:
            num_classes = int(arg)
        except ValueError:
            num_classes = 0
        if num_classes < 2:
            raise DataError(f"synthetic:CLASSES needs an integer >= 2, got {arg!r} in {spec!r}")
    else:
        num_classes = 10
    # Fixed data (seed 1234): per-class mean colours plus noise, so a network can learn it and
    # benchmarks see real-looking tensors.
    rng = np.random.default_rng(1234)
    colours = rng.uniform(40, 215, size=(num_classes, 3)).astype(np.float32)
    splits = {}
    for s, n in SYNTHETIC_SIZES.items():
        labels = rng.integers(0, num_classes, size=n).astype(np.int32)
        noise = rng.normal(0, 30, size=(n, resolution, resolution, 3)).astype(np.float32)
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        splits[s] = tf.data.Dataset.from_tensor_slices((images, labels))
    info = DatasetInfo(spec=spec, num_classes=num_classes,
                       class_names=tuple(f"class_{i}" for i in range(num_classes)),
                       split_sizes=dict(SYNTHETIC_SIZES), val_source="generated",
                       test_source="generated", image_shape=(resolution, resolution, 3),
                       crop_scale=(0.25, 1.0), eval_crop_pct=1.0)
    return Splits(splits["train"], splits["val"], splits["test"]), info


# ------------------------------------------------------------------------------------------
# Augmentation (single images, stateless, seeded per example)
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation. Defaults are the release's search recipe.

    Both recipes: docs/method.md, "Supernet training" and "Selection and retraining".

    Attributes:
      crop_scale, crop_ratio: random resized crop area fraction and aspect-ratio ranges.
      flip: random horizontal flip.
      color_jitter: brightness, contrast and saturation strength (0 = off).
      randaugment_ops, randaugment_magnitude, randaugment_std: RandAugment (0 ops = off); the
        magnitude (0..10) is drawn per op from N(magnitude, std), as timm's 'rand-m9-mstd0.5'.
        With RandAugment on, colour jitter is skipped (as in timm).
      erasing: probability of random erasing (after normalisation, per-pixel normal noise).
    """

    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.4
    randaugment_ops: int = 0
    randaugment_magnitude: float = 9.0
    randaugment_std: float = 0.5
    erasing: float = 0.2

    @classmethod
    def search(cls, info: Optional[DatasetInfo] = None, **overrides) -> "Augment":
        """The release's search recipe: crop, flip, colour jitter 0.4, random erasing 0.2.

        Datasets whose `DatasetInfo.search_augment` is False (digits) get none of it."""
        if info is not None and not info.search_augment:
            return dataclasses.replace(cls.none(), **overrides)
        return cls(**{**_dataset_defaults(info), **overrides})

    @classmethod
    def retrain(cls, info: Optional[DatasetInfo] = None, **overrides) -> "Augment":
        """The release's retrain recipe: crop, flip, RandAugment(2, 9), random erasing 0.2.

        Datasets whose `DatasetInfo.randaugment` is False (digits) get no RandAugment."""
        ops = 2 if info is None or info.randaugment else 0
        return cls(**{**_dataset_defaults(info), "color_jitter": 0.0, "randaugment_ops": ops,
                      **overrides})

    @classmethod
    def none(cls) -> "Augment":
        """No augmentation at all (eval-style resize only)."""
        return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, color_jitter=0.0,
                   erasing=0.0)


def _dataset_defaults(info):
    if info is None:
        return {}
    return {"flip": info.hflip, "crop_scale": tuple(info.crop_scale)}


def normalize(image):
    """float image in [0, 1] -> ImageNet-normalised float32."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (tf.cast(image, tf.float32) - mean) / std


def random_resized_crop(image, seed, resolution, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """uint8/float HWC -> float32 [0, 1] (resolution, resolution, 3) crop of random area/aspect."""
    shape = tf.shape(image)
    if tuple(scale) == (1.0, 1.0) and tuple(ratio) == (1.0, 1.0):
        crop = image
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=tuple(ratio), area_range=tuple(scale),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        crop = tf.slice(image, begin, size)
    crop = tf.image.resize(tf.cast(crop, tf.float32), [resolution, resolution], method="bilinear")
    return tf.clip_by_value(crop / 255.0, 0.0, 1.0)


def _gray(image):
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def _blend(degenerate, image, factor):
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def color_jitter(image, seed, strength=0.4):
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s] (torchvision's
    ColorJitter(s, s, s)), applied in that fixed order to a float [0, 1] image. Saturation is one
    3x3 colour matrix, so the whole jitter is a handful of fused passes over the image."""
    f = tf.random.stateless_uniform([3], seed, 1.0 - strength, 1.0 + strength)
    image = tf.clip_by_value(image * f[0], 0.0, 1.0)
    mean = tf.reduce_mean(_gray(image))
    image = tf.clip_by_value(mean + f[1] * (image - mean), 0.0, 1.0)
    # saturation: s * x + (1 - s) * gray(x), as x @ (s * I + (1 - s) * luma_column)
    luma = tf.constant([0.299, 0.587, 0.114])
    matrix = f[2] * tf.eye(3) + (1.0 - f[2]) * tf.tile(luma[:, None], [1, 3])
    shape = tf.shape(image)
    image = tf.reshape(tf.matmul(tf.reshape(image, [-1, 3]), matrix), shape)
    return tf.clip_by_value(image, 0.0, 1.0)


# -- RandAugment -------------------------------------------------------------------------------
# Our own stateless TF implementation of the timm policy the release trains with (15 ops, each
# applied with probability 0.5). keras.layers.RandAugment exists in Keras 3.15 but measured
# ~80 ms per 224px image inside tf.data here (vs ~1 ms for these ops) and draws from a stateful
# seed generator, so it is neither fast nor reproducible per example.

_FILL = tf.constant([124 / 255, 116 / 255, 104 / 255])  # timm's fill colour (ImageNet mean)


def _affine(image, transform):
    """Inverse-maps output (x, y) to input via the 8-parameter projective `transform`."""
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - _FILL)[None], transforms=tf.reshape(transform, [1, 8]),
        output_shape=shape[:2], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0] + _FILL


def _rotate(image, level):
    angle = level / 10.0 * 30.0 * math.pi / 180.0
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = tf.cos(angle), tf.sin(angle)
    return _affine(image, tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy,
                                    0.0, 0.0]))


def _shear_x(image, level):
    return _affine(image, tf.stack([1.0, level / 10.0 * 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def _shear_y(image, level):
    return _affine(image, tf.stack([1.0, 0.0, 0.0, level / 10.0 * 0.3, 1.0, 0.0, 0.0, 0.0]))


def _translate_x(image, level):
    dx = level / 10.0 * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
    return _affine(image, tf.stack([1.0, 0.0, dx, 0.0, 1.0, 0.0, 0.0, 0.0]))


def _translate_y(image, level):
    dy = level / 10.0 * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
    return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, dy, 0.0, 0.0]))


def _auto_contrast(image, level):
    lo = tf.reduce_min(image, axis=[0, 1])
    hi = tf.reduce_max(image, axis=[0, 1])
    scaled = (image - lo) / tf.maximum(hi - lo, 1e-6)
    return tf.where(hi > lo, scaled, image)


def _equalize(image, level):
    """PIL's ImageOps.equalize per channel."""
    ints = tf.cast(tf.round(image * 255.0), tf.int32)

    def channel(c):
        hist = tf.histogram_fixed_width(c, [0, 255], nbins=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        return tf.where(step == 0, c, tf.gather(lut, c))

    out = tf.stack([channel(ints[..., i]) for i in range(3)], axis=-1)
    return tf.cast(out, tf.float32) / 255.0


def _invert(image, level):
    return 1.0 - image


def _posterize(image, level):
    bits = tf.cast(level / 10.0 * 4.0, tf.int32)  # bits kept: 0..4 (timm/TPU convention)
    shift = 8 - bits
    ints = tf.cast(tf.round(image * 255.0), tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(ints, shift), shift),
                   tf.float32) / 255.0


def _solarize(image, level):
    threshold = level / 10.0  # timm: level/10*256 on 0..255 pixels
    return tf.where(image >= threshold, 1.0 - image, image)


def _solarize_add(image, level):
    added = tf.clip_by_value(image + level / 10.0 * 110.0 / 255.0, 0.0, 1.0)
    return tf.where(image < 128.0 / 255.0, added, image)


def _enhance_factor(level):
    return level / 10.0 * 1.8 + 0.1


def _color(image, level):
    return _blend(_gray(image), image, _enhance_factor(level))


def _contrast(image, level):
    return _blend(tf.reduce_mean(_gray(image)), image, _enhance_factor(level))


def _brightness(image, level):
    return _blend(tf.zeros_like(image), image, _enhance_factor(level))


def _sharpness(image, level):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.ones_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]])
    degenerate = smooth * border + image * (1.0 - border)  # PIL leaves the border as is
    return _blend(degenerate, image, _enhance_factor(level))


RANDAUGMENT_OPS = (
    ("AutoContrast", _auto_contrast, False), ("Equalize", _equalize, False),
    ("Invert", _invert, False), ("Rotate", _rotate, True), ("Posterize", _posterize, False),
    ("Solarize", _solarize, False), ("SolarizeAdd", _solarize_add, False),
    ("Color", _color, False), ("Contrast", _contrast, False), ("Brightness", _brightness, False),
    ("Sharpness", _sharpness, False), ("ShearX", _shear_x, True), ("ShearY", _shear_y, True),
    ("TranslateXRel", _translate_x, True), ("TranslateYRel", _translate_y, True),
)


def rand_augment(image, seed, num_ops=2, magnitude=9.0, std=0.5, prob=0.5):
    """timm-style RandAugment on a float [0, 1] HWC image: `num_ops` random ops, each applied
    with probability `prob` at a magnitude drawn from N(magnitude, std) clipped to [0, 10];
    geometric ops get a random sign."""
    seeds = tf.random.experimental.stateless_split(seed, num_ops)
    for i in range(num_ops):
        u = tf.random.stateless_uniform([3], seeds[i])
        choice = tf.random.stateless_uniform([], seeds[i] + 7, 0, len(RANDAUGMENT_OPS),
                                             dtype=tf.int32)
        level = magnitude + std * tf.random.stateless_normal([], seeds[i] + 11) if std else \
            tf.constant(float(magnitude))
        level = tf.clip_by_value(level, 0.0, 10.0)
        signed = tf.where(u[1] < 0.5, -level, level)
        branches = [(lambda f=f, g=g: f(image, signed if g else level))
                    for _, f, g in RANDAUGMENT_OPS]
        image = tf.cond(u[0] < prob,
                        lambda b=branches, c=choice: tf.clip_by_value(tf.switch_case(c, b), 0., 1.),
                        lambda x=image: x)
        image = tf.ensure_shape(image, [None, None, 3])
    return image


def random_erasing(image, seed, probability=0.2, area=(0.02, 1 / 3), log_ratio=(-1.204, 1.204),
                   attempts=10):
    """timm's RandomErasing (mode 'pixel', one box) on a normalised HWC image: with probability
    `probability`, one box of random area/aspect is filled with N(0, 1) noise."""
    s = tf.random.experimental.stateless_split(seed, 4)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    target = tf.random.stateless_uniform([attempts], s[0], area[0], area[1]) * hf * wf
    ratio = tf.exp(tf.random.stateless_uniform([attempts], s[1], log_ratio[0], log_ratio[1]))
    bh = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    bw = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    ok = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
    first = tf.argmax(tf.cast(ok, tf.int32))
    bh, bw = bh[first], bw[first]
    u = tf.random.stateless_uniform([3], s[2])
    top = tf.cast(u[1] * tf.cast(h - bh + 1, tf.float32), tf.int32)
    left = tf.cast(u[2] * tf.cast(w - bw + 1, tf.float32), tf.int32)

    def erase():
        # Noise only for the box, padded into place: most images are not erased and boxes are
        # small, so drawing a full-size normal tensor per image would dominate the pipeline.
        noise = tf.random.stateless_normal([bh, bw, shape[2]], s[3])
        pads = [[top, h - top - bh], [left, w - left - bw], [0, 0]]
        box = tf.pad(tf.ones([bh, bw, 1], tf.bool), pads)
        return tf.where(box, tf.pad(noise, pads), image)

    return tf.cond((u[0] < probability) & tf.reduce_any(ok), erase, lambda: image)


def center_crop(image, resolution, crop_pct=0.875):
    """Resize the shorter side to resolution / crop_pct, then take the central square; float
    [0, 1] output."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = float(resolution) / crop_pct
    scale = target / tf.reduce_min(shape)
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resolution)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    top = (size[0] - resolution) // 2
    left = (size[1] - resolution) // 2
    image = image[top:top + resolution, left:left + resolution]
    image = tf.ensure_shape(image, [resolution, resolution, 3])
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def augment_image(image, seed, resolution, augment: Augment):
    """One training example: raw uint8 HWC -> normalised float32 (resolution, resolution, 3)."""
    s = tf.random.experimental.stateless_split(seed, 5)
    x = random_resized_crop(image, s[0], resolution, augment.crop_scale, augment.crop_ratio)
    if augment.flip:
        x = tf.image.stateless_random_flip_left_right(x, s[1])
    if augment.randaugment_ops:
        x = rand_augment(x, s[2], augment.randaugment_ops, augment.randaugment_magnitude,
                         augment.randaugment_std)
    elif augment.color_jitter:
        x = color_jitter(x, s[2], augment.color_jitter)
    x = normalize(x)
    if augment.erasing:
        x = random_erasing(x, s[3], augment.erasing)
    return tf.ensure_shape(x, [resolution, resolution, 3])


# ------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------

def _finish(ds, batch_size, drop_remainder, num_classes):
    if num_classes:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=AUTOTUNE)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def train_pipeline(ds: tf.data.Dataset, resolution: int, batch_size: Optional[int] = None,
                   augment: Optional[Augment] = None, seed: int = 0, shuffle_buffer: int = 10_000,
                   repeat: bool = True, deterministic: bool = True,
                   one_hot: Optional[int] = None) -> tf.data.Dataset:
    """Raw split -> shuffled, augmented, normalised (float32 HWC, int32 label) examples.

    Args:
      ds: a raw split from `load`.
      resolution: output height and width.
      batch_size: None for unbatched examples (the search's contract); else batches with the
        remainder dropped, so every step has the same shape.
      augment: `Augment` (default: the release's search recipe).
      seed: seeds the shuffle order and every example's augmentation: the same seed gives the
        same stream of images.
      shuffle_buffer: examples held for shuffling (use `DatasetInfo.shuffle_buffer`).
      repeat: repeat forever (reshuffled each pass).
      deterministic: keep element order under parallel map (set False for a little more speed
        when reproducibility does not matter).
      one_hot: if set, labels become float32 one-hot vectors of this many classes (for Keras
        losses with label smoothing).
    """
    augment = Augment() if augment is None else augment
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    ds = tf.data.Dataset.zip(ds, seeds)
    ds = ds.map(lambda ex, s: (augment_image(ex[0], s, resolution, augment), ex[1]),
                num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return _finish(ds, batch_size, True, one_hot)


def eval_pipeline(ds: tf.data.Dataset, resolution: int, batch_size: Optional[int] = None,
                  crop_pct: float = 0.875, cache: bool = False,
                  one_hot: Optional[int] = None) -> tf.data.Dataset:
    """Raw split -> finite, ordered, resized and centre-cropped normalised examples.

    `crop_pct` 0.875 is the ImageNet convention; use `DatasetInfo.eval_crop_pct` (1.0 for images
    already at the network's size). `cache` keeps the processed split in memory (small sets).
    The last batch may be smaller.
    """
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    ds = ds.map(lambda x, y: (normalize(center_crop(x, resolution, crop_pct)), y),
                num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    return _finish(ds, batch_size, False, one_hot)


def search_inputs(splits: Splits, info: DatasetInfo, resolution: int,
                  augment: Optional[Augment] = None, seed: int = 0) -> tuple:
    """Exactly what the search takes: (unbatched, shuffled, augmented, repeating train examples;
    unbatched, finite held-out `val` examples), both (float32 HWC, int32 label)."""
    augment = Augment.search(info) if augment is None else augment
    train = train_pipeline(splits.train, resolution, augment=augment, seed=seed,
                           shuffle_buffer=info.shuffle_buffer)
    held_out = eval_pipeline(splits.val, resolution, crop_pct=info.eval_crop_pct)
    return train, held_out
