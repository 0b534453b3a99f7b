"""`search`: the loop that trains a supernet, step by step, resuming from its workdir.

Each step the host samples a path (`Sampler`, a function of (seed, step)), runs the traced step
(`step.StepFunctions`) and offers the path to the board with its batch accuracy; every
`meta_interval` steps the matching network's meta step runs first. The loop also keeps the
workdir (`workdir`: search.json, checkpoints, board.json), reports progress (`progress`), stops
cleanly on a signal or a run of non-finite steps (`safety`), and lets only the chief write
(`workers`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

import keras
import tensorflow as tf

from cream_tf import atomic
from cream_tf import safety
from cream_tf.board import Board
from cream_tf.errors import InputError
from cream_tf.sampler import Sampler
from cream_tf.search import workers
from cream_tf.search.config import SearchConfig
from cream_tf.search.progress import SHOWN, scalar, shown
from cream_tf.search.step import SearchState, StepFunctions
from cream_tf.search.workdir import check_signature, latest_checkpoint, write_signature
from cream_tf.space import Space
from cream_tf.supernet import SuperNet

__all__ = ["SearchResult", "search"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchResult:
    """What a search leaves: the trained supernet, its board, and where everything was written."""

    space: Space
    supernet: SuperNet
    board: Board
    matching: keras.Model
    sampler: Sampler
    workdir: str
    steps: int
    last_logs: dict
    traces: dict  # traces per step function in this call; 1 each means no retracing per path

    @property
    def entries(self) -> list:
        return self.board.entries()



def _check_dataset(ds, space: Space, what: str):
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"{what} must be a tf.data.Dataset of (image, label), got {type(ds)}")
    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"{what} must yield (image, label) pairs, unbatched; got {spec}")
    image, label = spec
    want = (space.resolution, space.resolution, 3)
    if image.shape.rank != 3 or tuple(image.shape) != want:
        raise ValueError(f"{what} images must be unbatched float32 {want} (the space's "
                         f"resolution); got shape {image.shape} (batch it inside search, not "
                         f"before)")
    if label.shape.rank != 0:
        raise ValueError(f"{what} labels must be scalar class ids, got shape {label.shape}")


def search(space: Space, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, workdir: str,
           config: SearchConfig | None = None, strategy=None, callback=None) -> SearchResult:
    """Trains a supernet of `space` with Cream's prioritized paths; resumes from `workdir`.

    Args:
      space: the search space.
      train_ds: unbatched, shuffled/augmented, repeating dataset of (float32 HWC image, int label).
        A resumed search continues its input pipeline where it stopped (the iterator is in the
        checkpoint), so seed its shuffles for exact reruns.
      val_ds: unbatched finite dataset held out from training; the meta update's outer slice
        comes from it (repeated) when `config.meta_outer` is 'held_out' (by default, the
        release's, it is the batch's next slice and val_ds is not read).
      workdir: where checkpoints, TensorBoard logs and board.json go. If it holds a checkpoint of
        the same search (same space, seed, batch, steps, board settings), the search resumes.
      config: `SearchConfig` (defaults: the release's ImageNet search).
      strategy: a tf.distribute strategy (default: the current one). All replicas train the same
        path; the global batch is split over them.
      callback: optional callable(step, logs) run on the host after every step (logs: loss,
        accuracy as a fraction of the batch, distill, board_size, macs, lr, path, board_changed,
        finite, bad_steps; from the first distilling step on also rho, teacher and board_best,
        the best board score as a fraction). It may raise to stop the search.

    Returns:
      `SearchResult` with the supernet, the board and the workdir.
    """
    config = config or SearchConfig()
    strategy = strategy or tf.distribute.get_strategy()
    _check_dataset(train_ds, space, "train_ds")
    _check_dataset(val_ds, space, "val_ds")
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise InputError(f"batch_size {config.batch_size} must divide evenly over {replicas} "
                         f"replicas")
    per_replica = config.batch_size // replicas
    if per_replica < max(config.board_images, config.meta_slice):
        raise InputError(f"each replica gets {per_replica} images per step; board_images "
                         f"({config.board_images}) and meta_slice ({config.meta_slice}) must not "
                         f"exceed it")
    if (config.meta_updates and config.meta_outer == "batch"
            and per_replica < 2 * config.meta_slice):
        raise InputError(f"each replica gets {per_replica} images per step; the meta update "
                         f"takes its two slices of meta_slice ({config.meta_slice}) images from "
                         f"the batch, so it needs at least {2 * config.meta_slice}")
    if config.jit_compile and replicas > 1:
        raise InputError("jit_compile=True only works on a single device (XLA cannot compile a "
                         "step that applies gradients under a multi-replica strategy)")
    chief, task_id = workers.role(strategy)

    check_signature(workdir, space, config)
    # Read (and check) the checkpoint before anything is built or written: a corrupted one
    # leaves the workdir exactly as it was.
    latest = latest_checkpoint(workdir)

    sampler = Sampler(space, config.prior, config.skip_prob, config.macs_range, config.seed)
    state = SearchState(space, config, strategy)
    supernet, optimizer, board = state.supernet, state.optimizer, state.board
    matching, meta_optimizer, step_var = state.matching, state.meta_optimizer, state.step
    schedule = state.schedule

    train_iter = iter(train_ds.batch(config.batch_size, drop_remainder=True).prefetch(2))
    val_batch = config.meta_slice * replicas
    val_iter = iter(val_ds.repeat().batch(val_batch, drop_remainder=True).prefetch(1))
    checkpoint = tf.train.Checkpoint(supernet=supernet, optimizer=optimizer, board=board,
                                     matching=matching, meta_optimizer=meta_optimizer,
                                     step=step_var, train_data=train_iter, val_data=val_iter)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not chief:  # every worker saves (collectives); only the chief's copy is kept, outside
        ckpt_dir = tempfile.mkdtemp(prefix=f"cream_tf_worker{task_id}_")  # the workdir
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, config.keep_checkpoints)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise safety.checkpoint_error(latest, e) from None
        _log.info("resumed from %s at step %d", latest, int(step_var.numpy()))
        if int(step_var.numpy()) >= config.total_steps:
            # A finished search: nothing to train, and nothing in the workdir is rewritten (no
            # search.json, board.json or new, empty TensorBoard events file).
            if not chief:
                tf.io.gfile.rmtree(ckpt_dir)
            if config.verbose and chief:
                print(f"cream_tf.search: {workdir} holds a finished search "
                      f"({config.total_steps} steps); returning it.", flush=True)
            return SearchResult(space, supernet, board, matching, sampler, workdir,
                                config.total_steps, {}, {"step": 0})
    if chief:
        os.makedirs(workdir, exist_ok=True)
        write_signature(workdir, space, config)

    steps = StepFunctions(state)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "logs")) if chief else None
    board_json = os.path.join(workdir, "board.json")
    if chief:
        atomic.write_text(board_json, board.to_json(space))

    start = int(step_var.numpy())
    total = config.total_steps
    progbar = keras.utils.Progbar(total, verbose=1 if (config.verbose and chief) else 0,
                                  stateful_metrics=SHOWN)
    if start and progbar.verbose:
        progbar.update(start)
    logs = {}
    bad_in_row = bad_total = 0
    saved_at = start
    try:
        with safety.catch_signals():
            for step in range(start, total):
                path_np = sampler.sample(step)
                path = tf.constant(path_np, tf.int32)
                images, labels = next(train_iter)
                # the board takes paths from the end of the warm-up on, so the first distillation
                # step is the one after the board's first entry (as in the release)
                after_warmup = step >= config.warmup_steps
                distill = after_warmup and int(board.size.numpy()) > 0
                if distill and config.meta_due(step):
                    val_images, val_labels = next(val_iter)
                    if not steps.meta(images, labels, val_images, val_labels, path):
                        _log.warning("step %d: non-finite meta-gradient; matching network not "
                                     "updated", step + 1)
                out = (steps.distill if distill else steps.warmup)(images, labels, path)
                finite = bool(out["finite"].numpy())
                correct = float(out["correct"].numpy())
                score = 100.0 * correct / config.batch_size  # the board's unit: percent
                macs = sampler.path_macs(path_np)
                changed = False
                if finite:
                    bad_in_row = 0
                    changed = after_warmup and board.update(
                        path_np, score, macs, out["images"].numpy(), out["probs"].numpy())
                else:  # the step changed nothing (weights, slots, BN statistics); the board neither
                    bad_in_row += 1
                    bad_total += 1
                    _log.warning("step %d: non-finite loss or gradient on path %s; update skipped "
                                 "(%d in a row, %d in all)", step + 1, path_np.tolist(), bad_in_row,
                                 bad_total)
                    if bad_in_row >= config.max_bad_steps:
                        last = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
                        raise safety.TooManyBadSteps(
                            f"search stopped at step {step + 1}: {bad_in_row} steps in a row had a "
                            f"non-finite loss or gradient (last path {path_np.tolist()}, workdir "
                            f"{workdir}); last good checkpoint: {last or 'none yet'}. Check the "
                            f"data for NaN/Inf or lower the learning rate, then rerun to resume "
                            f"from it")
                step_var.assign(step + 1)
                logs = {"loss": float(out["loss"].numpy()),
                        "accuracy": correct / config.batch_size, "distill": distill,
                        "board_size": int(board.size.numpy()), "macs": macs,
                        "lr": float(schedule(step).numpy()), "path": path_np.tolist(),
                        "board_changed": bool(changed), "finite": finite, "bad_steps": bad_total}
                if distill:  # before, rho is 0 and no teacher is picked: nothing to report
                    logs.update(rho=float(out["rho"].numpy()),
                                teacher=int(out["teacher"].numpy()),
                                board_best=float(board.scores.numpy()[0]) / 100.0)
                if chief and changed:
                    atomic.write_text(board_json, board.to_json(space))
                logged = (step + 1) % config.log_interval == 0 or step + 1 == total
                if writer is not None and logged:
                    with writer.as_default(step=step + 1):
                        for key, value in shown(logs):
                            scalar(f"search/{key}", value, step + 1)
                        scalar("search/macs", macs, step + 1)
                        scalar("search/lr", logs["lr"], step + 1)
                        if distill:  # 0: the board's best entry, as top1 would pick
                            scalar("search/teacher", logs["teacher"], step + 1)
                progbar.update(step + 1, shown(logs))
                # no periodic checkpoint inside a run of bad steps: the last one stays good
                if ((step + 1) % config.checkpoint_interval == 0 and finite) or step + 1 == total:
                    manager.save(checkpoint_number=step + 1)
                    saved_at = step + 1
                if callback is not None:
                    callback(step, logs)
                signum = safety.requested()
                if signum is not None:
                    raise _interrupted(signum, step + 1, saved_at, manager, workdir, strategy)
    finally:
        if writer is not None:
            writer.flush()
        if not chief and tf.io.gfile.exists(ckpt_dir):
            tf.io.gfile.rmtree(ckpt_dir)
    traces = {"step": steps.step.experimental_get_tracing_count()}
    return SearchResult(space, supernet, board, matching, sampler, workdir, total, logs, traces)


def _interrupted(signum, step, saved_at, manager, workdir, strategy):
    """Saves a checkpoint at `step` (single worker) and returns the `Interrupted` to raise."""
    name = safety.signal_name(signum)
    multi_worker = workers.multi_worker(strategy)
    # Several workers: saving is collective and the others may not have the signal; keep the
    # last periodic checkpoint instead of risking a hang.
    if saved_at != step and not multi_worker:
        manager.save(checkpoint_number=step)  # atomic: written under temp names, then renamed
        saved_at = step
    where = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return safety.Interrupted(signum, f"search interrupted by {name} after step {step}; "
                                      f"checkpoint {where or 'none'} (step {saved_at}). "
                                      f"Run the same command again to resume")
