"""Dataset specs, splits and augmentation (cream_tf.data)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cream_tf import data

RES = 32
LO = (0.0 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
HI = (1.0 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)


def as_arrays(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return xs, np.array(ys)


def check_raw(ds, num_classes, count=None, shape=None):
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.int32
    xs, ys = as_arrays(ds)
    for x in xs:
        assert x.ndim == 3 and x.shape[-1] == 3
        if shape:
            assert x.shape == shape
    assert ys.min() >= 0 and ys.max() < num_classes
    if count is not None:
        assert len(ys) == count
    return xs, ys


# -- specs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["nope", "tfds", "tfds:", "folder:", "digits:3", "", "mnist"])
def test_bad_spec_names_valid_kinds(spec):
    with pytest.raises(ValueError, match="valid kinds: tfds:NAME, folder:PATH, digits"):
        data.load(spec, RES)


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("digits", RES, val_fraction=0.7)
    with pytest.raises(ValueError, match="resolution"):
        data.load("digits", 4)
    with pytest.raises(ValueError, match="synthetic:CLASSES"):
        data.load("synthetic:one", RES)


# -- digits ----------------------------------------------------------------------------------

def test_digits_splits_shapes_and_determinism():
    splits, info = data.load("digits", RES)
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    assert sum(info.split_sizes.values()) == 1797
    assert info.hflip is False and info.randaugment is False
    assert data.Augment.retrain(info).randaugment_ops == 0 and not data.Augment.retrain(info).flip
    assert data.Augment.retrain().randaugment_ops == 2 and data.Augment.retrain().flip
    # a supernet on digits gets no search augmentation (it learned nothing under it); others do
    assert info.search_augment is False and data.Augment.search(info) == data.Augment.none()
    assert data.Augment.search(info, erasing=0.1).erasing == 0.1
    assert data.Augment.search() == data.Augment()
    first = {}
    for name in ("train", "val", "test"):
        xs, ys = check_raw(getattr(splits, name), 10, info.split_sizes[name], (RES, RES, 3))
        assert set(ys) == set(range(10)), f"{name} split is not stratified"
        first[name] = (np.stack(xs), ys)
        # grey digits: the three channels are equal
        assert np.array_equal(first[name][0][..., 0], first[name][0][..., 2])
    again, _ = data.load("digits", RES, seed=5)  # the training seed never moves the split
    for name in ("train", "val", "test"):
        xs, ys = as_arrays(getattr(again, name))
        np.testing.assert_array_equal(np.stack(xs), first[name][0])
        np.testing.assert_array_equal(ys, first[name][1])


def test_digits_resolution_follows_request():
    splits, info = data.load("digits", 48)
    x, _ = next(iter(splits.train))
    assert x.shape == (48, 48, 3) and info.image_shape == (48, 48, 3)


# -- synthetic -------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_sized():
    splits, info = data.load("synthetic:7", RES)
    assert info.num_classes == 7 and len(info.class_names) == 7
    xs, ys = check_raw(splits.val, 7, info.split_sizes["val"], (RES, RES, 3))
    xs2, ys2 = as_arrays(data.load("synthetic:7", RES)[0].val)
    np.testing.assert_array_equal(np.stack(xs), np.stack(xs2))
    np.testing.assert_array_equal(ys, ys2)
    assert data.load("synthetic", RES)[1].num_classes == 10


# -- folders ---------------------------------------------------------------------------------

def write_images(root, classes, per_class, size=(20, 24), gray_every=0):
    """Writes PNGs whose first two pixels encode (class, index), so every image is unique."""
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            img = np.full(size + (3,), 50, np.uint8)
            img[0, 0], img[0, 1] = c, i
            channels = 3
            if gray_every and i % gray_every == 0:
                img, channels = img[..., :1], 1
            png = tf.io.encode_png(tf.constant(img[..., :channels]))
            tf.io.write_file(os.path.join(root, name, f"img_{i:03d}.png"), png)


def signatures(ds):
    return [(int(x[0, 0, 0]), int(x[0, 1, 0])) for x, _ in ds]


def test_folder_of_classes_carves_disjoint_deterministic_splits(tmp_path):
    write_images(str(tmp_path), ["cat", "dog", "emu"], 20, gray_every=5)
    splits, info = data.load(f"folder:{tmp_path}", RES, val_fraction=0.2)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    sig = {}
    for name in ("train", "val", "test"):
        xs, ys = check_raw(getattr(splits, name), 3, info.split_sizes[name], (20, 24, 3))
        sig[name] = signatures(getattr(splits, name))
        for x, y in zip(xs, ys):
            assert x[0, 0, 0] == y  # the label is the folder the image came from
    assert sum(info.split_sizes.values()) == 60
    assert not set(sig["train"]) & set(sig["val"])
    assert not set(sig["train"]) & set(sig["test"])
    assert not set(sig["val"]) & set(sig["test"])
    again, _ = data.load(f"folder:{tmp_path}", RES, val_fraction=0.2, seed=9)
    assert signatures(again.val) == sig["val"]


def test_folder_with_split_folders(tmp_path):
    write_images(str(tmp_path / "train"), ["a", "b"], 10)
    write_images(str(tmp_path / "test"), ["a", "b"], 3)
    splits, info = data.load(f"folder:{tmp_path}", RES, val_fraction=0.3)
    assert info.split_sizes["test"] == 6 and info.test_source == "test"
    assert info.split_sizes["train"] + info.split_sizes["val"] == 20
    assert not set(signatures(splits.train)) & set(signatures(splits.val))
    check_raw(splits.test, 2, 6)


def test_folder_errors_name_path_and_layout(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"{missing}.*does not exist.*PATH/<class>/<image>"):
        data.load(f"folder:{missing}", RES)
    flat = tmp_path / "flat"
    flat.mkdir()
    tf.io.write_file(str(flat / "x.png"), tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)))
    with pytest.raises(ValueError, match=f"{flat}.*no class folders with images.*PATH/<class>"):
        data.load(f"folder:{flat}", RES)
    one = tmp_path / "one"
    write_images(str(one), ["only"], 3)
    with pytest.raises(ValueError, match="only class folder"):
        data.load(f"folder:{one}", RES)
    mismatched = tmp_path / "mismatched"
    write_images(str(mismatched / "train"), ["a", "b"], 4)
    write_images(str(mismatched / "test"), ["a", "zzz"], 2)
    with pytest.raises(ValueError, match="zzz"):
        data.load(f"folder:{mismatched}", RES)


# -- TFDS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,channels", [("cifar10", 3), ("mnist", 1)])
def test_tfds_mock(tmp_path, name, channels):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        splits, info = data.load(f"tfds:{name}", RES, data_dir=str(tmp_path), val_fraction=0.25)
        assert info.num_classes == 10 and len(info.class_names) == 10
        train_x, _ = check_raw(splits.train, 10)
        val_x, _ = check_raw(splits.val, 10)
        check_raw(splits.test, 10, 20)
    # every 4th example goes to val: disjoint by position
    assert len(train_x) == 15 and len(val_x) == 5
    assert not {x.tobytes() for x in train_x} & {x.tobytes() for x in val_x}
    assert train_x[0].shape[-1] == 3  # grey MNIST became RGB


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError) as e:
        data.load("tfds:cifar10", RES, data_dir=str(tmp_path))
    message = str(e.value)
    assert "cifar10" in message and str(tmp_path) in message
    assert "not prepared" in message and "download_and_prepare" in message


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="no_such_dataset_xyz.*unknown"):
        data.load("tfds:no_such_dataset_xyz", RES)


@pytest.mark.parametrize("sizes,expected", [
    ({"train": 100, "test": 10}, {"train": "train[:90]", "val": "train[90:]", "test": "test"}),
    ({"train": 100, "validation": 10},
     {"train": "train[:90]", "val": "train[90:]", "test": "validation"}),
    ({"train": 100, "validation": 10, "test": 5},
     {"train": "train", "val": "validation", "test": "test"}),
    ({"train": 100}, {"train": "train[10:90]", "val": "train[90:]", "test": "train[:10]"}),
])
def test_tfds_split_plan(sizes, expected):
    assert data.tfds_split_plan(sizes, 0.1) == expected


def test_tfds_split_plan_needs_train():
    with pytest.raises(ValueError, match="no 'train' split; its splits: test"):
        data.tfds_split_plan({"test": 5}, 0.1)


# -- augmentation ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return data.load("digits", RES)


AUGMENTS = {
    "none": data.Augment.none(),
    "search_no_erasing": data.Augment(erasing=0.0),
    "retrain_no_erasing": data.Augment.retrain(erasing=0.0),
}


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_augmentation_keeps_shape_dtype_and_range(digits, name):
    splits, info = digits
    ds = data.train_pipeline(splits.train, RES, batch_size=16, augment=AUGMENTS[name], seed=1)
    for x, y in ds.take(3):
        assert x.shape == (16, RES, RES, 3) and x.dtype == tf.float32
        assert y.shape == (16,) and y.dtype == tf.int32
        x = x.numpy()
        assert np.all(x >= LO - 1e-5) and np.all(x <= HI + 1e-5)


def test_random_erasing_changes_a_bounded_box():
    image = tf.zeros([RES, RES, 3])
    for i in range(5):
        out = data.random_erasing(image, tf.constant([i, 3], tf.int64), probability=1.0).numpy()
        erased = np.any(out != 0, axis=-1)
        frac = erased.mean()
        assert 0.015 <= frac <= 0.34, frac
        rows, cols = np.nonzero(erased)
        assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one box
    untouched = data.random_erasing(image, tf.constant([0, 3], tf.int64), probability=0.0)
    assert not np.any(untouched.numpy())


@pytest.mark.parametrize("op", [name for name, _, _ in data.RANDAUGMENT_OPS])
def test_each_randaugment_op_keeps_shape_and_range(op):
    fn, geometric = {n: (f, g) for n, f, g in data.RANDAUGMENT_OPS}[op]
    image = tf.random.stateless_uniform([RES, RES + 4, 3], [1, 2])
    for level in (0.0, 9.0, -9.0 if geometric else 10.0):
        out = fn(image, tf.constant(level))
        assert out.shape == image.shape
        out = np.clip(out.numpy(), 0, 1) if op == "Rotate" else out.numpy()
        assert np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6), op
    if op in ("Invert", "Solarize", "Brightness", "Color", "Contrast", "ShearX", "Rotate"):
        assert not np.allclose(fn(image, tf.constant(9.0)).numpy(), image.numpy())


def test_randaugment_ops_golden():
    image = tf.constant(np.linspace(0, 1, RES * RES * 3, dtype=np.float32).reshape(RES, RES, 3))
    np.testing.assert_allclose(data._invert(image, 0.0), 1 - image.numpy())
    # level 10 translates by 45% of the width: column 0 reads column 0.45 * 32 = 14.4 (bilinear)
    shifted = data._translate_x(image, tf.constant(10.0)).numpy()
    cols = image.numpy()
    np.testing.assert_allclose(shifted[:, 0], 0.6 * cols[:, 14] + 0.4 * cols[:, 15], atol=1e-5)
    # posterize keeps 4 bits at level 10: multiples of 16 / 255
    post = np.round(data._posterize(image, tf.constant(10.0)).numpy() * 255)
    assert np.all(post % 16 == 0)


def test_color_jitter_identity_when_factors_are_one():
    image = tf.random.stateless_uniform([8, 8, 3], [3, 4])
    np.testing.assert_allclose(data.color_jitter(image, tf.constant([1, 1], tf.int64), 0.0),
                               image, atol=1e-6)


def test_train_pipeline_is_deterministic_per_seed(digits):
    splits, _ = digits
    aug = data.Augment(erasing=0.5)  # every random op but RandAugment (checked elsewhere)

    def first(seed):
        return next(iter(data.train_pipeline(splits.train, RES, batch_size=8, augment=aug,
                                              seed=seed)))[0].numpy()
    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(3), first(4))


def test_eval_pipeline_is_finite_and_centre_crops(digits):
    splits, info = digits
    ds = data.eval_pipeline(splits.val, RES, batch_size=50, crop_pct=info.eval_crop_pct)
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert sum(len(y) for _, y in batches) == info.split_sizes["val"]
    xs = [x for x, _ in batches]
    raw = next(iter(splits.val))[0].numpy().astype(np.float32) / 255
    np.testing.assert_allclose(xs[0][0], (raw - data.IMAGENET_MEAN) / data.IMAGENET_STD,
                               atol=1e-5)
    # crop_pct < 1 zooms in on the centre of a larger image
    big = tf.constant(np.pad(np.full((8, 8, 3), 255, np.uint8), [[4, 4], [4, 4], [0, 0]]))
    out = data.center_crop(big, 8, crop_pct=0.5).numpy()
    assert out.shape == (8, 8, 3) and out.min() > 0.99


def test_one_hot_labels(digits):
    splits, _ = digits
    x, y = next(iter(data.eval_pipeline(splits.val, RES, batch_size=4, one_hot=10)))
    assert y.shape == (4, 10) and np.allclose(y.numpy().sum(axis=1), 1)


def test_search_inputs_contract(digits):
    splits, info = digits
    train, held_out = data.search_inputs(splits, info, RES, seed=0)
    assert train.element_spec[0].shape == (RES, RES, 3)
    assert train.element_spec[0].dtype == tf.float32
    assert train.element_spec[1].shape == () and train.element_spec[1].dtype == tf.int32
    assert held_out.element_spec == train.element_spec
    # repeats forever: more examples than the split holds
    assert train.cardinality() == tf.data.INFINITE_CARDINALITY
    n = info.split_sizes["val"]
    assert sum(1 for _ in held_out) == n


def test_pipeline_yields_batches_quickly():
    import time

    splits, info = data.load("synthetic", 64)
    ds = data.train_pipeline(splits.train, 64, batch_size=32,
                             augment=data.Augment.retrain(info), seed=0)
    it = iter(ds)
    next(it)
    start = time.time()
    for _ in range(5):
        x, _ = next(it)
    assert x.shape == (32, 64, 64, 3)
    # generous bound (shared 2-core CI machine): ~1 ms/image measured
    assert (time.time() - start) / (5 * 32) < 0.05
