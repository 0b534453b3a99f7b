"""The settings of one run.py job: every flag read once, every phase's config built up front.

`Settings.from_flags()` is the one reader of the flags in `run_flags`. It builds the search's,
the retraining's and the ranking check's configs and the space before anything is written or
trained, so a bad value or combination fails at once, whatever the mode. The bounds themselves
belong to those configs (`SearchConfig`, `RetrainConfig`, `RankConfig`, `Space`, the data
loader); this module only renames
their fields to the flags a user typed, so each bound is written once.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

from absl import flags

from cream_tf import cli
from cream_tf.errors import ConfigError

# Settings that define a search: a workdir holds one search, so these must match on a rerun.
SEARCH_KEYS = ("dataset", "val_fraction", "space", "layout", "depth", "resolution", "width",
               "num_classes", "seed", "batch_size", "search_epochs", "steps_per_epoch", "lr",
               "weight_decay", "warmup_epochs", "board_size", "board_images", "board_gap",
               "teacher", "scoring_gradient", "meta_interval", "meta_lr", "flops_min",
               "flops_max", "prior", "mixed_precision")

# The flag behind each config field (the configs name their fields, run.py its flags).
SEARCH_FLAGS = {
    "epochs": "search_epochs", "steps_per_epoch": "steps_per_epoch",
    "warmup_epochs": "warmup_epochs", "batch_size": "batch_size", "learning_rate": "lr",
    "weight_decay": "weight_decay", "prior": "prior", "board_size": "board_size",
    "board_images": "board_images", "board_gap": "board_gap", "teacher": "teacher",
    "scoring_gradient": "scoring_gradient",
    "meta_interval": "meta_interval", "meta_lr": "meta_lr", "seed": "seed",
    "checkpoint_interval": "checkpoint_every", "jit_compile": "jit_compile",
    "max_bad_steps": "max_bad_steps", "mixed_precision": "mixed_precision",
}
RETRAIN_FLAGS = {
    "epochs": "retrain_epochs", "batch_size": "retrain_batch_size", "lr": "retrain_lr",
    "dropout": "retrain_dropout", "ema_decay": "ema_decay", "seed": "seed",
    "warmup_epochs": "retrain_warmup_epochs",
}
SPACE_FLAGS = {"name": "space", "layout": "layout", "depth": "depth", "resolution": "resolution",
               "width": "width"}
RANK_FLAGS = {"paths": "rank_paths", "epochs": "rank_epochs", "seeds": "rank_seeds",
              "seed": "seed", "bn_batches": "select_bn_batches", "batch_size": "batch_size"}
COUNT_FLAGS = ("select_bn_batches", "tune_trials", "tune_epochs")  # no config owns these


@dataclasses.dataclass(frozen=True)
class Settings:
    """The checked settings of one run; field names are run.py's flags (see `run_flags`)."""

    mode: str
    workdir: str
    dataset: str
    data_dir: Optional[str]
    val_fraction: float
    space: str
    layout: str
    depth: Union[int, Tuple[int, ...]]  # one int for every stage, or one per stage
    resolution: int
    width: float
    num_classes: int                     # 0: the dataset's
    seed: int
    strategy: str
    deterministic: bool
    batch_size: int
    search_epochs: int
    steps_per_epoch: int                 # 0: one pass over the training split
    lr: float                            # per 1024 images
    weight_decay: float
    warmup_epochs: int
    board_size: int
    board_images: int
    board_gap: float
    teacher: str
    scoring_gradient: bool
    meta_interval: int
    meta_lr: float
    flops_min: float                     # millions of MACs; 0: no lower bound
    flops_max: float                     # millions of MACs; 0: no upper bound
    prior: str
    mixed_precision: str
    jit_compile: bool
    checkpoint_every: int
    max_bad_steps: int
    use_unfinished_search: bool
    select_bn_batches: int
    arch: Optional[str]
    retrain_epochs: int
    retrain_batch_size: int
    retrain_lr: float                    # per 1024 images
    retrain_warmup_epochs: float
    retrain_dropout: float
    ema_decay: float
    export_dir: Optional[str]
    model_name: str
    overwrite: bool
    tune_trials: int
    tune_epochs: int
    tune_algorithm: str
    rank_paths: int
    rank_epochs: int
    rank_seeds: int

    @classmethod
    def from_flags(cls) -> "Settings":
        """Reads run.py's flags (as parsed by run.py, or their defaults and what `flagsaver` set
        when no command line was parsed) and checks them all.

        Raises `cli.UsageError` naming the flag that is wrong and what would be valid.
        """
        from cream_tf import run_flags

        values = {name: _read(holder) for name, holder in run_flags.HOLDERS.items()}
        values["depth"] = _depth(values["depth"])
        settings = cls(**values)
        settings.check()
        return settings

    # -- the configs of the phases, built from the flags ---------------------------------------
    def search_config(self, train_examples: Optional[int] = None):
        """The search's `SearchConfig`; epochs are `train_examples // batch_size` steps unless
        --steps_per_epoch is set (1 when neither is known yet, to check the other fields)."""
        from cream_tf.search.config import SearchConfig

        steps = self.steps_per_epoch or (max(1, train_examples // self.batch_size)
                                         if train_examples else 1)
        low, high = self.macs_range
        with _as_flags(self, SEARCH_FLAGS):
            return SearchConfig(
                epochs=self.search_epochs, steps_per_epoch=steps,
                warmup_epochs=self.warmup_epochs, batch_size=self.batch_size,
                learning_rate=self.lr * self.batch_size / 1024,
                weight_decay=self.weight_decay, prior=self.prior,
                macs_range=None if low is None and high is None else (low, high),
                board_size=self.board_size, board_images=self.board_images,
                board_gap=self.board_gap, teacher=self.teacher,
                scoring_gradient=self.scoring_gradient,
                meta_interval=self.meta_interval, meta_lr=self.meta_lr, seed=self.seed,
                checkpoint_interval=self.checkpoint_every, jit_compile=self.jit_compile,
                max_bad_steps=self.max_bad_steps,
                mixed_precision=None if self.mixed_precision == "none" else self.mixed_precision)

    def retrain_config(self):
        """The retraining's `RetrainConfig` (its lr stays per 1024 images; it scales it)."""
        from cream_tf import retrain

        with _as_flags(self, RETRAIN_FLAGS):
            return retrain.RetrainConfig(
                epochs=self.retrain_epochs, batch_size=self.retrain_batch_size,
                lr=self.retrain_lr, dropout=self.retrain_dropout, ema_decay=self.ema_decay,
                seed=self.seed, warmup_epochs=self.retrain_warmup_epochs)

    def rank_config(self):
        """The ranking check's `RankConfig`: its trainings follow the retraining flags, its
        scores are measured as selection measures them."""
        from cream_tf import ranking

        retrain = self.retrain_config()
        with _as_flags(self, RANK_FLAGS):
            return ranking.RankConfig(
                paths=self.rank_paths, epochs=self.rank_epochs, seeds=self.rank_seeds,
                seed=self.seed, bn_batches=self.select_bn_batches,
                batch_size=min(self.batch_size, 256), retrain=retrain)

    def make_space(self, num_classes: int):
        """The search space of --space, --layout, --depth, --resolution and --width."""
        from cream_tf.space import Space

        with _as_flags(self, SPACE_FLAGS):
            return Space(self.space, self.layout, self.depth, self.resolution, self.width,
                         num_classes)

    @property
    def macs_range(self) -> tuple:
        """--flops_min/--flops_max as (low, high) MACs, inclusive; None for an open end."""
        from cream_tf import flops

        low = self.flops_min * 1e6 if self.flops_min else None
        high = self.flops_max * 1e6 if self.flops_max else None
        try:
            return flops.macs_range((low, high))
        except ValueError as e:
            raise cli.UsageError(f"--flops_min/--flops_max ({self.flops_min}M, "
                                 f"{self.flops_max}M): {e}") from None

    def search_identity(self) -> dict:
        """What run_config.json records: the settings a rerun in this workdir must share."""
        return {k: _jsonable(getattr(self, k)) for k in SEARCH_KEYS}

    # -- checks --------------------------------------------------------------------------------
    def check(self):
        """Every flag and combination, before any work: raises `cli.UsageError`."""
        from cream_tf import data

        for name in COUNT_FLAGS:
            if getattr(self, name) < 1:
                raise cli.UsageError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("flops_min", "flops_max"):
            if getattr(self, name) < 0:
                raise cli.UsageError(f"--{name} must be >= 0 (0: no bound), got "
                                     f"{getattr(self, name)}")
        if self.num_classes < 0 or self.num_classes == 1:
            raise cli.UsageError(f"--num_classes must be 0 (the dataset's) or at least 2, got "
                                 f"{self.num_classes}")
        if self.steps_per_epoch < 0:
            raise cli.UsageError(f"--steps_per_epoch must be >= 0 (0: one pass over the "
                                 f"training split), got {self.steps_per_epoch}")
        try:
            data.check_val_fraction(self.val_fraction)
        except ValueError as e:
            raise cli.UsageError(f"--{e}") from None
        self.macs_range  # noqa: B018  (checks --flops_min <= --flops_max)
        self.search_config()
        self.retrain_config()
        self.rank_config()
        if self.mode != "profile":  # a zoo name brings its own space
            self.make_space(self.num_classes or 10)


class _as_flags:
    """Turns a config's `ConfigError` into a usage error that names the flags behind it."""

    def __init__(self, settings: Settings, flag_of: dict):
        self.settings, self.flag_of = settings, flag_of

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if not isinstance(error, ConfigError) or error.field not in self.flag_of:
            return False  # a field no flag sets is out of bounds: our bug, keep the traceback
        value = getattr(self.settings, self.flag_of[error.field])
        if isinstance(value, tuple):  # --depth as typed
            value = ",".join(map(str, value))
        message = error.describe(lambda f: "--" + self.flag_of.get(f, f), value=value)
        raise cli.UsageError(message) from None


def rank_flag(field: str) -> str:
    """How run.py names a `RankConfig` field ("retrain.<field>" for the recipe's) in a message:
    its flag, or the field's own name where no flag sets it."""
    if field == "workdir":  # the ranking's folder, <--workdir>/rank
        return "folder"
    if field.startswith("retrain."):
        flag = RETRAIN_FLAGS.get(field[len("retrain."):])
    else:
        flag = RANK_FLAGS.get(field)
    return f"--{flag}" if flag else field


def _read(holder):
    """A flag's value; from Python without a command line (flags never parsed), its default or
    what `flagsaver` set, instead of absl's UnparsedFlagAccessError."""
    if holder.present or flags.FLAGS.is_parsed():
        return holder.value
    return flags.FLAGS[holder.name].value


def _depth(values) -> Union[int, Tuple[int, ...]]:
    try:
        depth = [int(d) for d in values]
    except ValueError:
        raise cli.UsageError(f"--depth takes one int or five, comma-separated, got "
                             f"{','.join(values)!r}") from None
    return depth[0] if len(depth) == 1 else tuple(depth)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
