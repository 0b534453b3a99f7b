"""The Cream search: supernet training with a prioritized board.

The method and its defaults: docs/method.md, "Supernet training" and "The prioritized board and
the matching network".

One step: sample a path on the host (`Sampler`, a function of (seed, step), so every replica and
worker trains the same path and a resumed run samples what an uninterrupted one would); forward it
on the global batch split over the replicas; after the warm-up and once the board holds a path,
score the student against every board entry in one batched forward, pick a teacher
(`matching.select_teacher`), run it without gradient and use the Cream loss; apply gradients to
the path's weights only (`PathSGD`: ops off the path keep weights and momentum bit-identical);
then offer the path to the board with its batch accuracy. Every `meta_interval` steps the matching
network takes a meta-gradient step (`matching.meta_gradients`) with its own optimizer.

Everything that a resumed search needs (supernet, optimizer, board, matching network, meta
optimizer, step and the position in both input pipelines) is one `tf.train.Checkpoint` under
`workdir/checkpoints`.

Where things live:
  config      `SearchConfig` (the settings and their bounds), `MIXED_PRECISION`.
  optimizer   `PathSGD` (updates the path's weights only), `LinearDecay` (its learning rate),
              and how a non-finite step reaches it (`step_is_finite`, `poison_gradients`).
  step        `SearchState` (everything a search trains and checkpoints) and `StepFunctions`
              (the traced warm-up/distillation step and the meta step).
  loop        `search` itself and its `SearchResult`.
  workdir     search.json (the search's identity), checkpoints, `load_search`.
  progress    the progress bar's figures and the TensorBoard scalars.
  workers     which process of a multi-worker search writes the workdir.

(Before issue 16 all of this was one module, `cream_tf.trainer`, which still re-exports it.)
"""
from cream_tf.search.config import MIXED_PRECISION, SearchConfig
from cream_tf.search.loop import SearchResult, search
from cream_tf.search.optimizer import LinearDecay, PathSGD
from cream_tf.search.step import SearchState, StepFunctions
from cream_tf.search.workdir import TrainedSearch, UnfinishedSearch, load_search

__all__ = ["MIXED_PRECISION", "SearchConfig", "SearchResult", "LinearDecay", "PathSGD", "search",
           "load_search", "SearchState", "StepFunctions", "TrainedSearch", "UnfinishedSearch"]
