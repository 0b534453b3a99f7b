"""Release checkpoints -> Keras: a PyTorch network of the release's layout (torch.nn, in
benchmarks/torch_release.py, shared with the PyTorch step benchmark), saved as the release saves
it, loaded into our zoo/child models; logits must agree."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.torch_release import TorchChild  # noqa: E402  the release's layout in torch.nn
from cream_tf import arch as arch_lib  # noqa: E402
from cream_tf import child, torch_weights, zoo  # noqa: E402
from cream_tf.space import Space  # noqa: E402


def randomize(net, seed):
    """Random weights and BN statistics, scaled so that activations stay O(1) through the net."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net.eval()


class CfgNode(dict):
    """Like yacs' CfgNode: a dict subclass with attributes, pickled by reference to this module."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["immutable"] = False


class Exploit:
    """Unpickling this with the standard rules would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def save_checkpoint(path, state_dict, ema=None, legacy=False, extra=None):
    ckpt = {"epoch": 3, "state_dict": state_dict, "optimizer": {"state": {}, "param_groups": []},
            "args": CfgNode(LR=0.1, MODEL=CfgNode(NAME="cream"))}
    if ema is not None:
        ckpt["state_dict_ema"] = ema
    ckpt.update(extra or {})
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


def torch_logits(net, images):
    with torch.no_grad():
        return net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


@pytest.fixture(scope="module")
def cream14():
    entry = zoo.get("cream_14")
    space = entry.space(num_classes=10)
    net = randomize(TorchChild(entry.arch(), space), seed=0)
    ema = randomize(TorchChild(entry.arch(), space), seed=1)
    model = zoo.build("cream_14", num_classes=10)
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    return net, ema, model, images


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_cream14_checkpoint_logits_match(cream14, tmp_path, legacy):
    net, ema, model, images = cream14
    path = save_checkpoint(tmp_path / "model_best.pth.tar", net.state_dict(), ema.state_dict(),
                           legacy=legacy)
    assert zoo.load_torch_checkpoint(model, path) is model
    expected = torch_logits(net, images)
    assert np.abs(expected).max() > 0.1  # a real signal, not all zeros
    np.testing.assert_allclose(model(images, training=False).numpy(), expected,
                               rtol=1e-4, atol=1e-4)
    zoo.load_torch_checkpoint(model, path, use_ema=True)
    np.testing.assert_allclose(model(images, training=False).numpy(), torch_logits(ema, images),
                               rtol=1e-4, atol=1e-4)


def test_bare_state_dict_and_module_prefix(cream14, tmp_path):
    net, _, model, images = cream14
    path = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    zoo.load_torch_checkpoint(model, path)
    np.testing.assert_allclose(model(images, training=False).numpy(), torch_logits(net, images),
                               rtol=1e-4, atol=1e-4)


def test_small_space_child_with_every_op_kind(tmp_path):
    space = Space("mbconv_res_conv", depth=2, resolution=32, width=0.5, num_classes=10)
    ir, res, conv = 3, 6, 8  # MB6 5x5, Res 3x3, Conv 3x3
    assert space.ops[res].kind == "res" and space.ops[conv].kind == "conv"
    skip = space.skip_index
    path = [[res, res], [conv, ir], [ir, skip], [1, conv], [4, res]]
    arch = arch_lib.path_to_arch(path, space)
    net = randomize(TorchChild(arch, space), seed=2)
    model = child.build(arch, space)
    ckpt = save_checkpoint(tmp_path / "child.pth.tar", net.state_dict())
    torch_weights.load_torch_checkpoint(model, ckpt)
    images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model(images, training=False).numpy(), torch_logits(net, images),
                               rtol=1e-4, atol=1e-4)


def test_every_mismatch_is_listed_and_model_untouched(cream14, tmp_path):
    net, _, model, _ = cream14
    state = dict(net.state_dict())
    del state["blocks.1.0.conv_dw.weight"]
    del state["classifier.bias"]
    state["blocks.9.0.conv.weight"] = torch.zeros(3)
    state["conv_head.weight"] = torch.zeros(7, 320, 1, 1)
    path = save_checkpoint(tmp_path / "bad.pth.tar", state)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(torch_weights.CheckpointMismatchError) as err:
        zoo.load_torch_checkpoint(model, path)
    message = str(err.value)
    for text in ("missing (2)", "blocks.1.0.conv_dw.weight (64, 1, 3, 3)", "classifier.bias (10,)",
                 "unexpected (1)", "blocks.9.0.conv.weight", "wrong shape (1)",
                 "conv_head.weight: checkpoint (7, 320, 1, 1), model needs (1280, 320, 1, 1)"):
        assert text in message, message
    for b, a in zip(before, model.weights):
        np.testing.assert_array_equal(b, a.numpy())


def test_pickled_code_is_not_run(cream14, tmp_path):
    net, _, model, _ = cream14
    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "evil.pth.tar", net.state_dict(),
                           extra={"args": Exploit(str(marker)), "epoch": Exploit(str(marker))})
    zoo.load_torch_checkpoint(model, path)
    assert not marker.exists()
    # The same file does run the command under plain unpickling: the test guards something real.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_use_ema_without_ema_and_non_checkpoints(cream14, tmp_path):
    net, _, model, _ = cream14
    path = save_checkpoint(tmp_path / "noema.pth.tar", net.state_dict())
    with pytest.raises(ValueError, match="no 'state_dict_ema'.*epoch, state_dict"):
        zoo.load_torch_checkpoint(model, path, use_ema=True)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        zoo.load_torch_checkpoint(model, junk)
    with pytest.raises(FileNotFoundError):
        zoo.load_torch_checkpoint(model, tmp_path / "absent.pth")


def test_name_map_matches_the_release_names():
    assert torch_weights.torch_name("stage2_block1_dwconv") == "blocks.2.0.conv_dw"
    assert torch_weights.torch_name("stage5_block2_se_expand") == "blocks.5.1.se.conv_expand"
    assert torch_weights.torch_name("stage1_block1_middle_conv", "res") == "blocks.1.0.conv2"
    assert torch_weights.torch_name("ds_project_conv") == "blocks.0.0.conv_pw"
    assert torch_weights.torch_name("final_bn") == "blocks.6.0.bn1"
    expected = torch_weights.expected_state_dict(zoo.build("cream_14", num_classes=10))
    net = TorchChild(zoo.get("cream_14").arch(), zoo.get("cream_14").space(num_classes=10))
    torch_state = {k: tuple(v.shape) for k, v in net.state_dict().items()
                   if not k.endswith("num_batches_tracked")}
    assert expected == torch_state


def test_cream_tf_import_does_not_import_torch():
    import subprocess
    code = "import sys, cream_tf, cream_tf.zoo, cream_tf.export, cream_tf.torch_weights; " \
           "print('torch' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
