"""benchmarks/torch_release.py runs the networks cream_tf runs: a `TorchSuperNet` path has exactly
the parameters (and BN statistics) of `cream_tf.child.build(path, space)`, its paths are the ones
`cream_tf.sampler.Sampler` draws, and the release's plain and Cream steps run."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import torch_release as tr  # noqa: E402
from cream_tf import arch as arch_lib  # noqa: E402
from cream_tf import child, sampler  # noqa: E402
from cream_tf.space import Space  # noqa: E402

SPACES = {
    "mbconv": Space("mbconv", "released", depth=2, resolution=32, width=0.5, num_classes=10),
    "mbconv_res_conv_paper": Space("mbconv_res_conv", "paper", depth=(1, 2, 3, 2, 1),
                                   resolution=32, width=0.75, num_classes=7),
}


def _keras_counts(model):
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    fixed = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return trainable, fixed


@pytest.mark.parametrize("name", list(SPACES))
def test_path_parameters_equal_the_keras_child(name):
    space = SPACES[name]
    net = tr.TorchSuperNet(space)
    paths = tr.PathSampler(space, "uniform", seed=3)
    flat = [paths.sample(s) for s in range(4)]
    flat.append(np.array([layer.choices[0] for layer in space.layers]))      # no skips
    flat.append(np.array([layer.choices[-1] for layer in space.layers]))     # every skip allowed
    for path in flat:
        nested = arch_lib.validate_path(sampler.Sampler(space).nested(path), space)
        torch_params = sum(p.numel() for p in net.path_parameters(path))
        torch_stats = sum(b.numel() for b in net.path_buffers(path))
        expected = _keras_counts(child.build(nested, space))
        assert (torch_params, torch_stats) == expected, (name, path)
    # the whole supernet: every op of every layer, once
    every = sum(p.numel() for p in net.parameters())
    assert every > max(sum(p.numel() for p in net.path_parameters(p)) for p in flat)


def test_forward_runs_only_the_path():
    space = SPACES["mbconv"]
    net = tr.TorchSuperNet(space).train()
    path = tr.PathSampler(space, "release", seed=0).sample(1)
    out = net(torch.randn(4, 3, 32, 32), path)
    assert out.shape == (4, 10)
    out.sum().backward()
    on_path = {id(p) for p in net.path_parameters(path)}
    for p in net.parameters():
        assert (p.grad is not None) == (id(p) in on_path)


@pytest.mark.parametrize("prior,skip_prob", [("uniform", None), ("release", None),
                                              ("release", 0.0), ("uniform", 0.3)])
def test_paths_are_the_samplers(prior, skip_prob):
    """skip_prob=0.0 with the release prior is benchmarks/presets.py's 'release' preset."""
    for space in SPACES.values():
        ours = tr.PathSampler(space, prior, seed=0, skip_prob=skip_prob)
        theirs = sampler.Sampler(space, prior, skip_prob, seed=0)
        np.testing.assert_allclose(ours.probs,
                                   sampler.op_probabilities(space, prior, skip_prob))
        for step in range(30):
            np.testing.assert_array_equal(ours.sample(step), theirs.sample(step))


def test_weight_decay_only_on_kernels():
    net = tr.TorchSuperNet(SPACES["mbconv"])
    opt = tr.release_optimizer(net)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    for name, p in net.named_parameters():
        kernel = name.endswith(".weight") and p.ndim > 1
        assert (id(p) in decayed) == kernel, name
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


@pytest.mark.parametrize("release_scoring", [False, True])
def test_steps_run_and_freeze_ops_off_the_path(release_scoring):
    space = SPACES["mbconv"]
    torch.manual_seed(0)
    net = tr.release_init(tr.TorchSuperNet(space))
    paths = tr.PathSampler(space, "uniform", seed=0)
    rng = np.random.default_rng(0)
    k, n = 3, 2
    board = tr.Board(k)
    for j in range(k):
        board.update(paths.sample(100 + j), 90.0 - j, torch.randn(n, 3, 32, 32),
                     torch.softmax(torch.randn(n, 10), 1))
    images = torch.randn(8, 3, 32, 32)
    labels = torch.from_numpy(rng.integers(0, 10, size=8))
    steps = tr.SearchSteps(net, images, labels, board, n, release_scoring=release_scoring)
    path = paths.sample(1)
    off = [p for p in net.parameters() if id(p) not in {id(q) for q in net.path_parameters(path)}]
    before = [p.detach().clone() for p in off]
    assert np.isfinite(steps.plain(path))
    assert np.isfinite(steps.cream(path))
    for b, p in zip(before, off):
        torch.testing.assert_close(b, p.detach(), rtol=0, atol=0)
    assert len(board.entries) == k
