"""`SearchConfig`: the settings of a search, their bounds and the step counts they give.

Each setting's meaning and the release's value: docs/method.md, "Supernet training".
"""
from __future__ import annotations

import dataclasses

from cream_tf import matching as matching_lib
from cream_tf.errors import is_count, require

__all__ = ["META_OUTER", "MIXED_PRECISION", "SearchConfig"]

# Dtype policies of the supernet; 'mixed_float16' adds dynamic loss scaling.
MIXED_PRECISION = (None, "mixed_bfloat16", "mixed_float16")
# Where the meta update's outer slice comes from: the batch's images meta_slice..2*meta_slice
# (the release) or the held-out split.
META_OUTER = ("batch", "held_out")


@dataclasses.dataclass
class SearchConfig:
    """Settings of a search; defaults are the release's ImageNet search.

    Each setting's meaning and the release's value: docs/method.md, "Supernet training".

    Steps: `epochs * steps_per_epoch` (ImageNet: 1,281,167 / 1024 -> 1251 per epoch). Scale it down
    by setting `epochs`, `steps_per_epoch`, `warmup_epochs` and `batch_size`.
    """

    epochs: int = 120
    steps_per_epoch: int = 1251
    warmup_epochs: int = 20            # CE only; distillation starts after (release: 20 of 120)
    batch_size: int = 1024             # global, over all replicas
    learning_rate: float = 1.0         # linear per-step decay to 0, no warm-up
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4         # coupled L2 on conv/dense kernels
    freeze_inactive: bool = True       # ops off the path keep weights and momentum (docs/method.md)
    label_smoothing: float = 0.1
    dropout: float = 0.0
    prior: object = "release"          # 'uniform', 'release' or one weight per op
    skip_prob: float | None = None     # None: uniform share where SkipConnect is allowed
    macs_range: tuple | None = None    # (min, max) MACs of sampled paths
    board_size: int = 10
    board_images: int = 4
    board_gap: float = 5.0
    teacher: str = "meta"              # 'meta' or 'top1'
    meta_interval: int = 200
    meta_lr: float = 1e-4
    meta_slice: int = 4                # per replica: the meta update's inner and outer slices
    meta_outer: str = "batch"          # outer slice: 'batch' (the release) or 'held_out'
    scoring_gradient: bool = True      # rho's gradient reaches the student's board scoring too
    seed: int = 0
    checkpoint_interval: int = 1000    # steps
    keep_checkpoints: int = 3
    log_interval: int = 10             # TensorBoard scalars every this many steps
    verbose: int = 1                   # 0 silent, 1 progress bar
    jit_compile: bool = False          # XLA for the step; single-device only
    max_bad_steps: int = 20            # stop after this many non-finite steps in a row
    mixed_precision: str | None = None  # None, 'mixed_bfloat16' or 'mixed_float16' (loss scaling)
    trace_meta: bool | None = None     # None: traced iff the search makes >= 100 meta updates

    def __post_init__(self):
        def need(field, ok, requirement):
            require("SearchConfig", field, getattr(self, field), ok, requirement)

        for field in ("epochs", "steps_per_epoch", "batch_size", "board_size", "board_images",
                      "meta_interval", "meta_slice", "checkpoint_interval", "keep_checkpoints",
                      "log_interval", "max_bad_steps"):
            need(field, is_count(getattr(self, field)), "an int >= 1")
        need("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs,
             lambda name: f"in [0, {name('epochs')}={self.epochs}]")
        need("teacher", self.teacher in matching_lib.TEACHER_MODES,
             f"one of {', '.join(matching_lib.TEACHER_MODES)}")
        need("learning_rate", self.learning_rate > 0, "> 0")
        need("meta_lr", self.meta_lr > 0, "> 0")
        need("board_gap", self.board_gap >= 0, ">= 0")
        need("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)")
        need("dropout", 0 <= self.dropout < 1, "in [0, 1)")
        need("weight_decay", self.weight_decay >= 0, ">= 0")
        need("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        need("meta_outer", self.meta_outer in META_OUTER, f"one of {', '.join(META_OUTER)}")
        need("mixed_precision", self.mixed_precision in MIXED_PRECISION,
             f"one of {', '.join(map(str, MIXED_PRECISION))}")
        need("trace_meta", self.trace_meta in (None, True, False),
             "None (automatic), True or False")

    def meta_due(self, step: int) -> bool:
        """Whether the meta update runs before training step `step` (0-based), board permitting.

        The release's rule: after the warm-up, at batches meta_interval, 2 * meta_interval, ...
        of each epoch, never at an epoch's first batch.
        """
        within = step % self.steps_per_epoch
        return (self.teacher == "meta" and step >= self.warmup_steps and within > 0
                and within % self.meta_interval == 0)

    @property
    def meta_updates(self) -> int:
        """How many meta updates the search makes (if the board is never empty after warm-up)."""
        per_epoch = (self.steps_per_epoch - 1) // self.meta_interval
        return (self.epochs - self.warmup_epochs) * per_epoch if self.teacher == "meta" else 0

    @property
    def meta_traced(self) -> bool:
        """Whether the meta update runs as a traced tf.function. Its forwards call the step's
        shared supernet forward, so the trace holds only the update's own ops and their wiring:
        a one-off cost, after which each update is far cheaper than an eager one (measured in
        benchmarks/README.md). Worth it for long searches, not for a few updates."""
        if self.trace_meta is not None:
            return bool(self.trace_meta)
        return self.meta_updates >= 100

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prior"] = self.prior if isinstance(self.prior, str) else list(self.prior)
        d["macs_range"] = None if self.macs_range is None else list(self.macs_range)
        return d
