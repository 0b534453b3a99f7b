"""The old home of the search, kept so that `from cream_tf import trainer` keeps working.

Issue 16 split this module into the package `cream_tf.search`, one concept per file (see its
docstring for what lives where): `search.config` (SearchConfig), `search.optimizer` (PathSGD,
LinearDecay), `search.step` (SearchState, StepFunctions), `search.loop` (search),
`search.workdir` (search.json, checkpoints, load_search), `search.progress` and
`search.workers`. New code imports from `cream_tf.search`; this module only re-exports.

Replacing a name here (`trainer.search = ...`) changes nothing the package calls: patch
`cream_tf.search.search` (what the pipeline in `cream_tf.job` calls) instead.
"""
from cream_tf.cli import atomic_write as write_atomic  # noqa: F401  (public name)
from cream_tf.sampler import Sampler  # noqa: F401  (tests and benchmarks use trainer.Sampler)
from cream_tf.search.config import MIXED_PRECISION, SearchConfig
from cream_tf.search.loop import SearchResult, search
from cream_tf.search.optimizer import LinearDecay, PathSGD
from cream_tf.search.optimizer import poison_gradients, step_is_finite  # noqa: F401
from cream_tf.search.step import SearchState, StepFunctions
from cream_tf.search.workdir import TrainedSearch, UnfinishedSearch, load_search  # noqa: F401
from cream_tf.search.workdir import check_signature as _check_signature  # noqa: F401
from cream_tf.search.workdir import signature as _signature  # noqa: F401

__all__ = ["MIXED_PRECISION", "SearchConfig", "SearchResult", "LinearDecay", "PathSGD", "search",
           "write_atomic", "SearchState", "StepFunctions"]

# The names before issue 16 made them public; tests still use them.
_SearchState = SearchState
_StepFunctions = StepFunctions
