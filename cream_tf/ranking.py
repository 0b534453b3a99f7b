"""The ranking check: does the supernet order paths the way standalone training does?

One-shot search is only as good as the supernet's ranking of paths: the board, the teacher and
the final selection all trust that a path the supernet scores higher would also train better on
its own. This module measures that on a finished search (docs/ranking.md):

1. candidates: `RankConfig.paths` distinct paths from the search's own `Sampler` (same prior and
   MACs range, at steps far beyond any search, so they are fresh draws), then the board's paths
   in the range that are not among them;
2. each candidate's supernet score: `select.evaluate_path`, the selection's own measure
   (inherited weights, BatchNorm re-estimated on training batches, held-out accuracy);
3. each candidate trained from scratch `RankConfig.seeds` times (`retrain.retrain`, the
   retraining recipe with `RankConfig.retrain`'s epochs), its test accuracy per seed;
4. Kendall's tau-b and Spearman's rho between score and mean standalone accuracy, each with a
   bootstrap interval over paths, and the top-k overlap; then a scatter plot.

Everything is recorded in `<workdir>/rank.json` as it is measured (atomically), so a run stopped
anywhere resumes with the next unfinished score or (path, seed) training, and a rerun of a
finished ranking writes nothing. The statistics are plain numpy (tau-b and rho with ties, as
scipy.stats computes them), since scipy is not a dependency of the library.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Optional

import numpy as np

from cream_tf import atomic
from cream_tf.errors import InputError, is_count, require
from cream_tf.run_identity import RunIdentity

__all__ = ["RankConfig", "average_ranks", "kendall_tau", "spearman_rho", "bootstrap_interval",
           "top_k_overlap", "statistics", "candidate_paths", "check_folder", "rank", "rank_identity",
           "to_text",
           "RESULT_FILE", "PLOT_FILE", "IDENTITY_FILE", "FIRST_STEP"]

RESULT_FILE = "rank.json"
PLOT_FILE = "rank.png"
IDENTITY_FILE = "run.json"
# Candidates are the sampler's paths of steps FIRST_STEP, FIRST_STEP + 1, ...: far beyond any
# search's steps, so they are not the paths the search itself trained first.
FIRST_STEP = 2 ** 40
TOP_K = 5


# -- statistics ------------------------------------------------------------------------------

def _pair(x, y) -> tuple:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"two 1-D sequences of one length are expected, got shapes {x.shape} "
                         f"and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("the values must be finite")
    return x, y


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of `x`, tied values sharing the mean of their ranks (scipy's 'average')."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def kendall_tau(x, y) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt(pairs untied in x * pairs untied in y).

    Ties count in neither; NaN when x or y is constant (no order to compare).
    """
    x, y = _pair(x, y)
    upper = np.triu_indices(len(x), 1)
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    untied = np.count_nonzero(sx) * np.count_nonzero(sy)
    return float(np.sum(sx * sy) / math.sqrt(untied)) if untied else float("nan")


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks; NaN when x or y is constant."""
    x, y = _pair(x, y)
    rx, ry = average_ranks(x) - (len(x) + 1) / 2.0, average_ranks(y) - (len(y) + 1) / 2.0
    norm = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
    return float(np.sum(rx * ry) / norm) if norm else float("nan")


def bootstrap_interval(statistic: Callable, x, y, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple:
    """Percentile bootstrap interval (low, high) of `statistic(x, y)` over resampled pairs.

    Pairs (paths) are drawn with replacement, `resamples` times, from `np.random.default_rng(
    seed)`, so the interval is a function of the data and the seed. Resamples on which the
    statistic is undefined (NaN: all drawn paths tie) are left out; (NaN, NaN) if all are.
    """
    x, y = _pair(x, y)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(int(resamples), len(x)))
    values = np.array([statistic(x[d], y[d]) for d in draws])
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def top_k_overlap(scores, accuracies, k: int) -> int:
    """How many of the k best paths by `scores` are among the k best by `accuracies`.

    Ties are broken by position (the earlier path ranks higher), so the count is well defined.
    """
    scores, accuracies = _pair(scores, accuracies)
    if not 1 <= k <= len(scores):
        raise ValueError(f"k must be in [1, {len(scores)}], got {k!r}")
    best = lambda v: set(np.argsort(-v, kind="stable")[:k].tolist())
    return len(best(scores) & best(accuracies))


def statistics(scores, accuracies, resamples: int = 1000, seed: int = 0,
               top_k: int = TOP_K) -> dict:
    """The report's numbers: tau-b and rho, each with its 95% bootstrap interval, and the
    top-k overlap with k = min(top_k, number of paths)."""
    out = {"paths": len(scores)}
    for name, fn in (("kendall_tau", kendall_tau), ("spearman_rho", spearman_rho)):
        low, high = bootstrap_interval(fn, scores, accuracies, resamples, seed)
        out[name] = {"value": _finite(fn(scores, accuracies)), "low": _finite(low),
                     "high": _finite(high)}
    k = min(top_k, len(scores))
    out["top_k"] = {"k": k, "overlap": top_k_overlap(scores, accuracies, k)}
    out["bootstrap"] = {"resamples": int(resamples), "seed": int(seed), "level": 0.95}
    return out


def _finite(value: float) -> Optional[float]:
    """JSON has no NaN: an undefined statistic is null."""
    return None if math.isnan(value) else float(value)


# -- settings --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RankConfig:
    """What a ranking measures; defaults suit the digits demo (configs/small.flags).

    Attributes:
      paths: paths drawn from the search's sampler (the board's paths come on top).
      epochs: standalone training epochs per (path, seed).
      seeds: standalone trainings per path, seeds `seed`, `seed + 1`, ...; a ranking may be
        extended with more seeds later, never with fewer.
      seed: the first training seed (the candidates come from the search's own sampler seed).
      bn_batches, batch_size: the supernet score's BatchNorm re-estimation batches and batch
        size, as selection uses them.
      retrain: the retraining recipe (`retrain.RetrainConfig`; default: its defaults). Each
        standalone training is that recipe compressed to `epochs`: the warm-up keeps its share
        of the schedule (`training`).
      resamples, top_k: bootstrap resamples of the intervals and the k of the top-k overlap
        (they only change the report, which every run recomputes).
    """

    paths: int = 20
    epochs: int = 8
    seeds: int = 1
    seed: int = 0
    bn_batches: int = 20
    batch_size: int = 128
    retrain: object = None
    resamples: int = 1000
    top_k: int = TOP_K

    def __post_init__(self):
        def need(field, ok, requirement):
            require("RankConfig", field, getattr(self, field), ok, requirement)

        need("paths", is_count(self.paths) and self.paths >= 2, "an int >= 2")
        for field in ("epochs", "seeds", "bn_batches", "batch_size", "resamples", "top_k"):
            need(field, is_count(getattr(self, field)), "an int >= 1")
        if self.retrain is None:
            from cream_tf.retrain import RetrainConfig

            object.__setattr__(self, "retrain", RetrainConfig())

    def training(self, k: int):
        """The `RetrainConfig` of training seed `seed + k`: the recipe over `epochs` epochs, its
        warm-up scaled by epochs / recipe epochs, one line per epoch."""
        recipe = self.retrain
        return recipe.replace(epochs=self.epochs, seed=self.seed + k, verbose=2,
                              warmup_epochs=recipe.warmup_epochs * self.epochs / recipe.epochs)

    def identity(self) -> dict:
        """What a ranking's measurements depend on (`seeds` aside, which may grow): a rerun with
        other values is refused. Keys are fields; "retrain.<field>" for the recipe's."""
        recipe = dataclasses.asdict(self.retrain)
        recipe.pop("verbose")
        recipe.pop("seed")  # the training seeds are `seed` + k
        return {"paths": self.paths, "epochs": self.epochs, "seed": self.seed,
                "bn_batches": self.bn_batches, "batch_size": self.batch_size,
                **{f"retrain.{k}": v for k, v in recipe.items()}}


def rank_identity(workdir: str, config: RankConfig, name: Callable[[str], str] = str,
                  remedy: Optional[str] = None) -> RunIdentity:
    """The ranking a folder holds (`run.json`): its `RankConfig.identity` under "settings" and
    its number of seeds under "seeds"."""
    return RunIdentity(workdir, IDENTITY_FILE, config.identity(), noun="ranking", name=name,
                       field="settings",
                       remedy=remedy or f"rank in a new folder, or delete {workdir} to rank "
                                        f"again (only {name('seeds')} may grow)")


def check_folder(workdir: str, config: RankConfig, name: Callable[[str], str] = str,
                 remedy: Optional[str] = None) -> RunIdentity:
    """Raises `InputError` (one line) if `workdir` holds a ranking with other settings or more
    seeds; returns the ranking's identity. Reads only run.json. `name`, `remedy`: as
    `run_identity.RunIdentity` takes them."""
    identity = rank_identity(workdir, config, name, remedy)
    identity.check()
    if os.path.exists(identity.path):
        with open(identity.path) as f:
            seeds = json.load(f).get("seeds", 0)
        if config.seeds < seeds:
            raise InputError(f"{identity.workdir!r} holds a ranking over {seeds} seeds: "
                             f"{name('seeds')} {config.seeds} would drop trained ones; give "
                             f"{name('seeds')} {seeds} or more (more seeds extend it), or "
                             f"{identity.remedy}")
    return identity


# -- candidates ------------------------------------------------------------------------------

def candidate_paths(sampler, board_entries, count: int) -> list:
    """The paths a ranking measures: `count` distinct draws of `sampler` (the search's: same
    prior, MACs range and seed) at steps FIRST_STEP, FIRST_STEP + 1, ..., then the board's paths
    in the sampler's MACs range that are not among them, best first.

    Rows: {"path": per-stage lists, "notation": the paper's notation, "macs": int,
    "on_board": bool, "sampled": bool (drawn, rather than added from the board)}.
    """
    from cream_tf import arch as arch_lib

    space = sampler.space
    flats = []
    draws = 100 * count
    for step in range(FIRST_STEP, FIRST_STEP + draws):
        flat = tuple(int(o) for o in sampler.sample(step))
        if flat not in flats:
            flats.append(flat)
            if len(flats) == count:
                break
    else:
        raise InputError(f"the search's sampler drew only {len(flats)} distinct paths in {draws:,} "
                         f"draws, fewer than the {count} asked for (its MACs range or the space "
                         f"holds few paths); rank fewer paths")
    sampled = len(flats)
    low, high = sampler.macs_range
    for entry in board_entries:
        flat = tuple(int(o) for o in entry["path"])
        if flat in flats:
            continue
        if low <= sampler.path_macs(flat) <= high:
            flats.append(flat)
    on_board = {tuple(int(o) for o in e["path"]) for e in board_entries}
    rows = []
    for i, flat in enumerate(flats):
        nested = arch_lib.nested_path(list(flat), space)
        rows.append({"path": [list(s) for s in nested],
                     "notation": arch_lib.path_to_arch(nested, space).to_paper(),
                     "macs": sampler.path_macs(flat), "on_board": flat in on_board,
                     "sampled": i < sampled})
    return rows


# -- the check -------------------------------------------------------------------------------

class _Record:
    """rank.json: the candidates with what has been measured of them, and the report once
    every (path, seed) is measured; rewritten (atomically, only when it changes) after each
    measurement, so a stopped ranking resumes where it stopped."""

    def __init__(self, workdir: str, candidates: list, config: RankConfig, held_out: str):
        self.path = os.path.join(workdir, RESULT_FILE)
        self.config, self.held_out = config, held_out
        self.rows = [{**row, "supernet_score": None, "accuracies": {}, "mean": None, "std": None}
                     for row in candidates]
        self.written = False
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)["paths"]
            if [r["path"] for r in saved] != [r["path"] for r in self.rows]:
                raise InputError(f"{self.path} ranks other paths than this search's sampler and "
                                 f"board give now (was the search changed since?); delete "
                                 f"{workdir} to rank again, or rank in a new folder")
            for row, old in zip(self.rows, saved):
                row["supernet_score"] = old["supernet_score"]
                row["accuracies"] = dict(old["accuracies"])

    @property
    def seeds(self) -> list:
        return [self.config.seed + k for k in range(self.config.seeds)]

    def complete(self) -> bool:
        return all(r["supernet_score"] is not None and
                   all(str(s) in r["accuracies"] for s in self.seeds) for r in self.rows)

    def payload(self) -> dict:
        for row in self.rows:
            values = [row["accuracies"][str(s)] for s in self.seeds if str(s) in row["accuracies"]]
            done = len(values) == len(self.seeds)
            row["mean"] = float(np.mean(values)) if done else None
            row["std"] = float(np.std(values, ddof=1)) if done and len(values) > 1 else None
        report = None
        if self.complete():
            report = statistics([r["supernet_score"] for r in self.rows],
                                [r["mean"] for r in self.rows], self.config.resamples,
                                self.config.seed, self.config.top_k)
        return {"paths": self.rows, "seeds": self.seeds, "epochs": self.config.epochs,
                "held_out": self.held_out,
                "complete": report is not None, "statistics": report}

    def save(self) -> dict:
        payload = self.payload()
        self.written |= atomic.write_json_if_changed(self.path, payload)
        return payload


def rank(space, search, sampler, splits, info, workdir: str, config: RankConfig = RankConfig(),
         strategy=None, on_record: Optional[Callable] = None,
         name: Callable[[str], str] = str, remedy: Optional[str] = None) -> dict:
    """Runs (or resumes, or just reports) the ranking check of a finished search in `workdir`.

    Args:
      space: the search space (with the dataset's classes).
      search: the trained search (`search.load_search`: its `supernet` and `board`).
      sampler: the search's `sampler.Sampler` (same prior, MACs range and seed).
      splits, info: from `data.load`: scores on `val`, trains on `train`, reports `test` (`val`
        when the dataset has none).
      workdir: the ranking's folder: rank.json, rank.png, run.json and train/ (one retraining
        folder per (path, seed)).
      config: `RankConfig`.
      strategy: the `tf.distribute` strategy of the trainings (default: the current one).
      on_record: called as on_record(kind, index, seed) after each measurement is written
        ("score" with seed None, or "train").
      name, remedy: how the caller names `RankConfig` fields in messages (run.py: its flags)
        and what it tells a user whose folder holds another ranking (`check_folder`).

    Returns rank.json's content. Raises `InputError` when `workdir` holds a ranking with other
    settings or other paths, and `safety.Interrupted` after SIGINT/SIGTERM (what was measured is
    kept).
    """
    from cream_tf import plots, safety
    from cream_tf import retrain as retrain_lib
    from cream_tf import select as select_lib

    identity = check_folder(workdir, config, name, remedy)
    candidates = candidate_paths(sampler, search.board.entries(), config.paths)
    held_out = "test" if splits.test is not None else "val"
    record = _Record(workdir, candidates, config, held_out)
    identity.write(seeds=config.seeds)
    notify = on_record or (lambda kind, index, seed: None)
    total = len(record.rows)

    def recorded(kind, index, seed):
        record.save()
        notify(kind, index, seed)
        signum = safety.requested()
        if signum is not None:
            raise safety.Interrupted(
                signum, f"ranking interrupted by {safety.signal_name(signum)}; what was measured "
                        f"is in {record.path}. Run the same command again to resume")

    with safety.catch_signals():
        bn_train, val = select_lib.selection_inputs(splits, info, space.resolution)
        for i, row in enumerate(record.rows):
            if row["supernet_score"] is None:
                row["supernet_score"] = select_lib.evaluate_path(
                    space, search.supernet, row["path"], bn_train, val, config.bn_batches,
                    config.batch_size)
                print(f"rank: path {i + 1}/{total} {row['notation']}: supernet score "
                      f"{row['supernet_score']:.2f}%", flush=True)
                recorded("score", i, None)
        for i, row in enumerate(record.rows):
            for k, seed in enumerate(record.seeds):
                if str(seed) in row["accuracies"]:
                    continue
                print(f"rank: path {i + 1}/{total} {row['notation']}, seed {seed}: training "
                      f"{config.epochs} epochs", flush=True)
                row["accuracies"][str(seed)] = _train(
                    retrain_lib, space, row["path"], splits, info,
                    os.path.join(workdir, "train", f"path{i:03d}", f"seed{seed}"),
                    config.training(k), strategy)
                recorded("train", i, seed)
    payload = record.save()
    png = os.path.join(workdir, PLOT_FILE)
    if record.written or not os.path.exists(png):
        plots.plot_rank(payload, png)
    return payload


def _train(retrain_lib, space, path, splits, info, workdir, config, strategy) -> float:
    """One standalone training from scratch: its accuracy (percent) on test (val without one).
    The seed fixes the initial weights too, so a training resumed after a kill or run alone
    starts where it would in an uninterrupted ranking."""
    import gc

    import keras

    keras.utils.set_random_seed(config.seed)
    result = retrain_lib.retrain(path, space, splits, info, workdir, config, strategy)
    accuracy = result.test_accuracy if result.test_accuracy is not None else result.val_accuracy
    del result
    gc.collect()
    return 100.0 * float(accuracy)


def to_text(payload: dict) -> str:
    """The report in a few lines: what run.py prints at the end of a ranking."""
    stats = payload["statistics"]
    if stats is None:
        return "ranking: not complete"
    fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"
    lines = [f"ranking of {stats['paths']} paths ({len(payload['seeds'])} seed(s), "
             f"{payload['epochs']} epochs each):"]
    for key, label in (("kendall_tau", "Kendall tau-b"), ("spearman_rho", "Spearman rho ")):
        s = stats[key]
        lines.append(f"  {label}: {fmt(s['value'])}  (95% bootstrap interval "
                     f"{fmt(s['low'])} .. {fmt(s['high'])})")
    top = stats["top_k"]
    lines.append(f"  top-{top['k']} overlap: {top['overlap']} of {top['k']}")
    return "\n".join(lines)
