"""A PyTorch network of the release's layout, shared by the checkpoint tests and the benchmark.

* The release's blocks in torch.nn (names as in its checkpoints; docs/method.md, "Blocks" and
  "The released architectures"):
  `SqueezeExcite` (hard-sigmoid gate), `DepthwiseSeparable`, `InvertedResidual`, `Bottleneck`,
  `ConvBnAct`, and `TorchChild`, one child network built from an `Arch`.
* `TorchSuperNet`: the release's supernet structure (its `SuperNet.forward_features` loop): stem,
  then `blocks[stage][layer][op]`, an `nn.ModuleList` of every op of the space at every searchable
  layer (an `nn.Identity` for SkipConnect where the layer allows it), the DS block as stage 0 and
  the 1x1 conv as the last stage, each with a single choice; a forward takes the path and runs
  only the chosen modules, eagerly, as the release does.
* `PathSampler`: the paths `cream_tf.sampler.Sampler` draws (same priors, same RNG stream per
  step), without importing TensorFlow.
* `SearchSteps`: one plain (CE) step and one Cream distillation step of the release's training
  loop on this supernet, for `benchmarks/torch_release_step.py`.

Channels, strides, depths, ops and where SkipConnect is allowed all come from a `cream_tf.space.Space`,
so a `TorchSuperNet` path and `cream_tf.child.build(path, space)` are the same network.
Importing this module imports torch but not TensorFlow.
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cream_tf import arch as arch_lib
from cream_tf.space import Space, make_divisible

RELEASE_PRIOR = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)  # k3e4, k3e6, k5e4, k5e6, k7e4, k7e6


# ---------------------------------------------------------------------------------------------
# Blocks


def _pad(k, s):
    return ((s - 1) + (k - 1)) // 2


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


def hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        reduced = make_divisible(channels * 0.25)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(F.relu(self.conv_reduce(s)))
        return x * hard_sigmoid(s)


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, _pad(3, stride), groups=cin, bias=False)
        self.bn1 = _bn(cin)
        self.se = SqueezeExcite(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.silu(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return y + x if self.residual else y


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, e, stride):
        super().__init__()
        mid = cin * e
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = _bn(mid)
        self.conv_dw = nn.Conv2d(mid, mid, k, stride, _pad(k, stride), groups=mid, bias=False)
        self.bn2 = _bn(mid)
        self.se = SqueezeExcite(mid)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = F.silu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.residual else y


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        mid = int(cout / 4)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=True)
        self.bn1 = _bn(mid)
        self.conv2 = nn.Conv2d(mid, mid, k, stride, _pad(k, stride), bias=True)
        self.bn2 = _bn(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=True)
        self.bn3 = _bn(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True), _bn(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, _pad(k, stride), bias=False)
        self.bn1 = _bn(cout)

    def forward(self, x):
        return F.silu(self.bn1(self.conv(x)))


class TorchChild(nn.Module):
    def __init__(self, arch, space):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, space.stem_channels, 3, 2, _pad(3, 2), bias=False)
        self.bn1 = _bn(space.stem_channels)
        stages = [nn.Sequential(DepthwiseSeparable(space.stem_channels, space.ds_channels,
                                                   space.ds_stride))]
        cin = space.ds_channels
        for ops, cout, stride in zip(arch.stages, space.stage_channels, space.stage_strides):
            blocks = []
            for b, op in enumerate(ops):
                s = stride if b == 0 else 1
                if op.kind == "ir":
                    blocks.append(InvertedResidual(cin, cout, op.kernel, op.expansion, s))
                elif op.kind == "res":
                    blocks.append(Bottleneck(cin, cout, op.kernel, s))
                else:
                    blocks.append(ConvBnAct(cin, cout, op.kernel, s))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        stages.append(nn.Sequential(ConvBnAct(cin, space.final_channels, 1, 1)))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(space.final_channels, space.head_channels, 1, bias=True)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)

    def forward(self, x):
        x = F.silu(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = F.silu(self.conv_head(x.mean((2, 3), keepdim=True)))
        return self.classifier(x.flatten(1))


def make_op(op, cin, cout, stride):
    """The torch module of one op of a space (SkipConnect: identity)."""
    if op.kind == "ir":
        return InvertedResidual(cin, cout, op.kernel, op.expansion, stride)
    if op.kind == "res":
        return Bottleneck(cin, cout, op.kernel, stride)
    if op.kind == "conv":
        return ConvBnAct(cin, cout, op.kernel, stride)
    if op.kind == "skip":
        if stride != 1 or cin != cout:
            raise ValueError("SkipConnect needs stride 1 and equal widths")
        return nn.Identity()
    raise ValueError(f"unknown op kind {op.kind!r}")


def release_init(net):
    """The release's initialisation: conv N(0, sqrt(2 / fan_out)), dense U(+-1/sqrt(out)), BN 1/0."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                m.weight.uniform_(-bound, bound)
                m.bias.zero_()
    return net


# ---------------------------------------------------------------------------------------------
# The supernet

class TorchSuperNet(nn.Module):
    """The release's supernet layout over a cream_tf `Space`.

    `blocks[0]` is the DS block, `blocks[1..5]` the searchable stages, `blocks[6]` the 1x1 conv;
    `blocks[s][l]` is an `nn.ModuleList` with one module per op index of the space allowed at
    that layer (SkipConnect is the last index, so leaving it out where it is not allowed keeps
    the other indices). `forward(x, path)` takes a path as per-stage lists of op indices
    (`cream_tf.arch` path form) or a flat list, and runs only the chosen modules.
    """

    def __init__(self, space: Space):
        super().__init__()
        self.space = space
        self.conv_stem = nn.Conv2d(3, space.stem_channels, 3, 2, _pad(3, 2), bias=False)
        self.bn1 = _bn(space.stem_channels)
        stages = [nn.ModuleList([nn.ModuleList([DepthwiseSeparable(
            space.stem_channels, space.ds_channels, space.ds_stride)])])]
        layers = iter(space.layers)
        for depth in space.depth:
            stage = nn.ModuleList()
            for _ in range(depth):
                layer = next(layers)
                allowed = set(layer.choices)
                choices = [make_op(op, layer.in_channels, layer.out_channels, layer.stride)
                           for i, op in enumerate(space.ops) if i in allowed]
                if len(choices) != max(allowed) + 1:
                    raise ValueError("only SkipConnect (the last op index) may be left out")
                stage.append(nn.ModuleList(choices))
            stages.append(stage)
        cin = space.stage_channels[-1]
        stages.append(nn.ModuleList([nn.ModuleList([ConvBnAct(cin, space.final_channels, 1, 1)])]))
        self.blocks = nn.ModuleList(stages)
        self.conv_head = nn.Conv2d(space.final_channels, space.head_channels, 1, bias=True)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)

    def nested(self, path):
        """Per-stage op lists with the fixed stages: [[0], stage 1, ..., stage 5, [0]]."""
        stages = arch_lib.nested_path(path, self.space)
        return [[0]] + [[int(o) for o in s] for s in stages] + [[0]]

    def forward(self, x, path):
        x = F.silu(self.bn1(self.conv_stem(x)))
        for stage, ops in zip(self.blocks, self.nested(path)):
            for choices, op in zip(stage, ops):
                x = choices[op](x)
        x = F.silu(self.conv_head(x.mean((2, 3), keepdim=True)))
        return self.classifier(x.flatten(1))

    def path_modules(self, path):
        """The modules a path runs: fixed parts and its chosen ops (the release's rand_parameters)."""
        fixed = [self.conv_stem, self.bn1, self.conv_head, self.classifier]
        chosen = [choices[op] for stage, ops in zip(self.blocks, self.nested(path))
                  for choices, op in zip(stage, ops)]
        return fixed + chosen

    def path_parameters(self, path):
        return [p for m in self.path_modules(path) for p in m.parameters()]

    def path_buffers(self, path):
        return [b for m in self.path_modules(path) for name, b in m.named_buffers()
                if not name.endswith("num_batches_tracked")]


# ---------------------------------------------------------------------------------------------
# Paths

def op_probabilities(space: Space, prior="uniform", skip_prob=None):
    """Per-layer op probabilities [layers, ops], as `cream_tf.sampler.op_probabilities(space,
    prior, skip_prob)` computes them for 'uniform' and 'release' (checked by a test)."""
    skip = space.skip_index
    probs = np.zeros((space.num_layers, len(space.ops)))
    for l, layer in enumerate(space.layers):
        non_skip = [c for c in layer.choices if c != skip]
        p_skip = 0.0
        if skip in layer.choices:
            p_skip = 1.0 / len(layer.choices) if skip_prob is None else float(skip_prob)
        if prior == "uniform":
            w = np.ones(len(non_skip))
        elif prior == "release":
            mb = [c for c in non_skip if space.ops[c].kind == "ir"]
            prior_mb = np.array([RELEASE_PRIOR[c] for c in mb])
            prior_mb = prior_mb / prior_mb.sum()
            share = len(mb) / len(non_skip)
            w = np.array([share * prior_mb[mb.index(c)] if c in mb else 1.0 / len(non_skip)
                          for c in non_skip])
        else:
            raise ValueError(f"prior must be 'uniform' or 'release', got {prior!r}")
        probs[l, non_skip] = (1.0 - p_skip) * w / w.sum()
        if p_skip:
            probs[l, skip] = p_skip
    return probs


class PathSampler:
    """Flat paths per step from a seeded numpy RNG: step t's path is the one
    `cream_tf.sampler.Sampler(space, prior, skip_prob, seed=seed).sample(t)` draws (no MACs
    range)."""

    def __init__(self, space: Space, prior="uniform", seed=0, skip_prob=None):
        self.space, self.seed = space, int(seed)
        self.probs = op_probabilities(space, prior, skip_prob)
        self._cum = np.cumsum(self.probs, axis=1)
        for l in range(space.num_layers):
            self._cum[l, np.flatnonzero(self.probs[l])[-1]:] = 2.0

    def sample(self, step):
        rng = np.random.default_rng([self.seed, int(step)])
        u = rng.random((self.space.num_layers, 1))
        return (u > self._cum).sum(axis=1).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# The release's training step

def release_optimizer(net, lr=0.1, momentum=0.9, weight_decay=1e-4):
    """SGD as the release builds it (`create_optimizer_supernet` with filter_bias_and_bn):
    Nesterov momentum, weight decay on parameters of rank > 1 that are not biases (conv and dense
    kernels), none on BN parameters and biases."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.SGD([{"params": no_decay, "weight_decay": 0.0},
                            {"params": decay, "weight_decay": weight_decay}],
                           lr=lr, momentum=momentum, nesterov=True)


def soft_cross_entropy(logits, soft_target):
    """mean over the batch of sum_k -target_k * log_softmax(logits)_k (the release's KD term)."""
    return torch.sum(-soft_target * F.log_softmax(logits, dim=1), dim=1).mean()


class Board:
    """The prioritized board, host side: up to K entries (accuracy, path, images, probs), best
    first. A path enters while the board is not full or when it beats the worst entry by more
    than `gap` points; a path already on the board updates its entry."""

    def __init__(self, size, gap=5.0):
        self.size, self.gap, self.entries = int(size), float(gap), []

    def update(self, path, accuracy, images, probs):
        key = tuple(int(p) for p in path)
        for i, e in enumerate(self.entries):
            if e[1] == key:
                self.entries[i] = (accuracy, key, images, probs)
                break
        else:
            if len(self.entries) >= self.size and accuracy <= self.entries[-1][0] + self.gap:
                return
            self.entries.append((accuracy, key, images, probs))
        self.entries.sort(key=lambda e: -e[0])
        del self.entries[self.size:]

    def stacked(self):
        """(images [K*n, C, H, W], probs [K, n, classes]) of the entries."""
        return (torch.cat([e[2] for e in self.entries]), torch.stack([e[3] for e in self.entries]))


class SearchSteps:
    """The release's search step (`lib/core/train.py: train_epoch`) on a `TorchSuperNet`.

    `plain(path)`: forward in train mode, CE with label smoothing, zero_grad(set_to_none),
    backward, SGD step. `cream(path)`: the distillation step: the student scores the board's
    K*n images (train mode, no gradient; one batched forward, or the release's K grad-enabled
    forwards with `release_scoring`), the matching layer (one Linear, n*classes -> 1) picks the
    teacher, the teacher path runs on the batch without gradient, loss = (rho * KD + (2 - rho) *
    CE) / 2, backward, step, and the board update on the host.

    With `release_scoring` rho is sigmoid(-score) of the last entry scored and keeps its graph,
    as the release's `select_teacher` does, so the backward also runs through that entry's
    scoring forward and the matching layer; otherwise rho = sigmoid(score of the chosen
    teacher) without gradient, as cream_tf does (docs/method.md, "Where cream_tf departs from the
    release").
    """

    def __init__(self, net, images, labels, board, board_images, label_smoothing=0.1, lr=0.1,
                 weight_decay=1e-4, release_scoring=False, channels_last=False):
        self.net, self.board = net, board
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.images = images.contiguous(memory_format=self.fmt)
        self.labels = labels
        self.n = int(board_images)
        self.smoothing = float(label_smoothing)
        self.release_scoring = bool(release_scoring)
        classes = net.classifier.out_features
        self.matching = nn.Linear(self.n * classes, 1)
        self.optimizer = release_optimizer(net, lr=lr, weight_decay=weight_decay)
        self.optimizer.add_param_group({"params": list(self.matching.parameters()),
                                        "weight_decay": 0.0, "lr": 1e-4})
        net.train()

    def _update(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def plain(self, path):
        logits = self.net(self.images, path)
        loss = F.cross_entropy(logits, self.labels, label_smoothing=self.smoothing)
        self._update(loss)
        return loss.item()

    def _teacher(self, path):
        board_images, board_probs = self.board.stacked()
        k = board_probs.shape[0]
        if self.release_scoring:  # select_teacher of the release, 'meta' mode
            best, index, score = -math.inf, 0, None
            for i in range(k):
                x = board_images[i * self.n:(i + 1) * self.n].contiguous(memory_format=self.fmt)
                probs = F.softmax(self.net(x, path), dim=1)
                score = self.matching((probs - board_probs[i]).reshape(1, -1))
                if score.item() > best:
                    best, index = score.item(), i
            return index, torch.sigmoid(-score).reshape(())
        with torch.no_grad():
            x = board_images.contiguous(memory_format=self.fmt)
            probs = F.softmax(self.net(x, path), dim=1).reshape(k, self.n, -1)
            scores = self.matching((probs - board_probs).reshape(k, -1)).squeeze(1)
            index = int(torch.argmax(scores))
            return index, torch.sigmoid(scores[index])

    def cream(self, path):
        index, rho = self._teacher(path)
        teacher_path = self.board.entries[index][1]
        with torch.no_grad():
            soft = F.softmax(self.net(self.images, teacher_path), dim=1)
        logits = self.net(self.images, path)
        ce = F.cross_entropy(logits, self.labels, label_smoothing=self.smoothing)
        kd = soft_cross_entropy(logits, soft)
        loss = (rho * kd + (2 - rho) * ce) / 2
        self._update(loss)
        with torch.no_grad():
            accuracy = 100.0 * float((logits.argmax(1) == self.labels).sum()) / len(self.labels)
            n = self.n
            self.board.update(path, accuracy, self.images[:n].contiguous().clone(),
                              F.softmax(logits[:n], dim=1).clone())
        return loss.item()
