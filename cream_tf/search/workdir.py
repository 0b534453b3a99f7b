"""What a search keeps in its workdir, and reading it back.

  search.json    the search's identity (`signature`: space, seed, batch, steps, board settings)
                 and its whole config; a search or `load_search` with another identity is
                 refused (`run_identity.RunIdentity`), so a workdir never mixes two searches.
  checkpoints/   `tf.train.Checkpoint`s of everything a resumed search needs (written by
                 `loop.search`); `latest_checkpoint` finds and verifies the newest.
  board.json     the board, rewritten whenever it changes.
  logs/          TensorBoard events.

`load_search` reads the trained supernet and board from the newest checkpoint without training.
"""
from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from cream_tf import safety
from cream_tf.board import Board
from cream_tf.run_identity import RunIdentity
from cream_tf.search.config import SearchConfig
from cream_tf.space import Space
from cream_tf.supernet import SuperNet

__all__ = ["SIGNATURE_FILE", "TrainedSearch", "UnfinishedSearch", "check_signature",
           "identity", "latest_checkpoint", "load_search", "signature", "write_signature"]

SIGNATURE_FILE = "search.json"


def signature(space: Space, config: SearchConfig) -> dict:
    """The settings that make two searches in one workdir the same search (JSON values)."""
    values = {"space": dataclasses.asdict(space), "seed": config.seed,
              "batch_size": config.batch_size, "total_steps": config.total_steps,
              "board_size": config.board_size, "board_images": config.board_images,
              "teacher": config.teacher}
    if config.mixed_precision:  # only when set: workdirs of float32 searches keep resuming
        values["mixed_precision"] = config.mixed_precision
    return json.loads(json.dumps(values))  # the form it takes after a JSON round trip


def identity(workdir: str, space: Space, config: SearchConfig) -> RunIdentity:
    """The search's identity as search.json records it (under "signature")."""
    return RunIdentity(workdir, SIGNATURE_FILE, signature(space, config), noun="search",
                       field="signature")


def check_signature(workdir: str, space: Space, config: SearchConfig) -> dict:
    """The search's signature; raises `InputError` if `workdir` holds a search with another one,
    naming each differing setting."""
    return identity(workdir, space, config).check()


def write_signature(workdir: str, space: Space, config: SearchConfig) -> str:
    """Writes search.json: the signature and the whole config (atomically)."""
    return identity(workdir, space, config).write(config=config.to_dict())


def latest_checkpoint(workdir: str):
    """The newest checkpoint prefix under `workdir`/checkpoints (verified readable), or None."""
    try:
        latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    except (tf.errors.OpError, ValueError) as e:
        raise safety.CheckpointError(
            f"{os.path.join(workdir, 'checkpoints', 'checkpoint')} cannot be read ({e}); delete it "
            f"to resume from the newest checkpoint files, or use a new workdir") from None
    if latest:
        safety.verify_checkpoint(latest)
    return latest


class UnfinishedSearch(ValueError):
    """`load_search` found no checkpoint, or one of a search that has steps left."""


@dataclasses.dataclass
class TrainedSearch:
    """A search's trained supernet and board as its last checkpoint holds them."""

    space: Space
    supernet: SuperNet
    board: Board
    steps: int        # steps the checkpoint has trained
    total_steps: int  # steps the search was configured for

    @property
    def finished(self) -> bool:
        return self.steps >= self.total_steps


def load_search(space: Space, workdir: str, config: SearchConfig | None = None,
                allow_unfinished: bool = False) -> TrainedSearch:
    """Reads the supernet and board of the search in `workdir` from its newest checkpoint.

    Nothing trains and no step is traced: this is what selection (and anything else that only
    needs a trained supernet) uses, so it never resumes a search by accident and its memory is
    the supernet's. A search with steps left raises `UnfinishedSearch` (saying how many) unless
    `allow_unfinished`; so does a workdir without a checkpoint.
    """
    config = config or SearchConfig()
    check_signature(workdir, space, config)
    latest = latest_checkpoint(workdir)
    if not latest:
        raise UnfinishedSearch(f"{workdir} holds no search checkpoint; run the search first")
    r = space.resolution
    supernet = SuperNet(space, dropout=config.dropout)
    board = Board(config.board_size, space.num_layers, config.board_images, (r, r, 3),
                  space.num_classes, gap=config.board_gap)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(supernet=supernet, board=board, step=step)
    try:  # the optimizer, matching network and input positions are the loop's: not needed
        checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise safety.checkpoint_error(latest, e) from None
    result = TrainedSearch(space, supernet, board, int(step.numpy()), config.total_steps)
    if not result.finished and not allow_unfinished:
        raise UnfinishedSearch(
            f"the search in {workdir} has trained {result.steps} of {result.total_steps} steps "
            f"({result.total_steps - result.steps} left); rerun the search to finish it, or use "
            f"the supernet as it is")
    return result
