"""Does the search find better networks? Cream against its baselines at one training budget.

    python benchmarks/search_quality.py                   # defaults: digits, ~1 hour on 2 cores
    python benchmarks/search_quality.py --seeds=3 --search_epochs=10 --retrain_epochs=8

On one space, one dataset (train / validation / test splits of `data.load`) and one search budget
counted in training images seen, it compares, for every seed:

  (a) cream     `trainer.search` (teacher 'meta'), then `select.select` on its board;
  (b) top1      the same with the best board path as teacher (teacher 'top1');
  (c) spos      the supernet trained with cross-entropy only the whole time (warmup_epochs ==
                epochs: single-path one-shot, no distillation); the pick is the best of the
                `--tau_paths` random in-range paths scored by `select.evaluate_path` (inherited
                weights, BatchNorm re-estimated, validation split);
  (d) tuner     `tuner.tune` (keras-tuner random search in the MACs range, every trial trained
                standalone), best trial by validation accuracy;
  (e) random    `--tau_paths` random in-range paths (one fixed set, the same for every seed),
                each retrained; the row is their mean and spread (over paths, not seeds).

Every pick is retrained by `retrain.retrain` with one `RetrainConfig` (seeded with the row's seed)
and scored on the TEST split, which neither the searches nor the selections read (they use the
validation split). The retraining is not part of the search budget.

Budget: a one-shot search sees search_epochs x steps_per_epoch x batch_size training images
(Cream's teacher and board forwards re-use the step's batch and add compute, not images; its
meta-gradient reads meta_slice validation images every meta_interval steps). The tuner gets
the same number: tune_trials x tune_epochs x S x batch_size with S = the largest number of steps
per trial epoch that stays within it (the shortfall is printed).

Ranking: Kendall's tau-b between the SPOS supernet's scores of the `--tau_paths` random paths
(inherited weights) and their test accuracy after standalone retraining, one tau per seed
(with `--tau_supernets=spos,cream` also for the Cream supernet).

Everything is written to `--out` (JSON, atomically) after every phase; searches, tuner trials
and retrainings resume from `--workdir` when the script is rerun with the same settings.
"""
import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Our own FlagValues, not absl's global one: tests load this script in the same process as
# run.py, whose flags (--dataset, --space, ...) have the same names.
FLAGS = flags.FlagValues()


def _flag(define, *args, **kwargs):
    return define(*args, flag_values=FLAGS, **kwargs)


_flag(flags.DEFINE_string, "dataset", "digits",
      "dataset spec of cream_tf.data.load (train/val/test)")
_flag(flags.DEFINE_string, "space", "mbconv", "search space name")
_flag(flags.DEFINE_string, "layout", "released", "space layout")
_flag(flags.DEFINE_integer, "depth", 1, "blocks per stage")
_flag(flags.DEFINE_integer, "resolution", 32, "input size")
_flag(flags.DEFINE_float, "width", 0.5, "width multiplier")
_flag(flags.DEFINE_integer, "seeds", 2, "seeds 0..seeds-1: one search of each kind, tuner run and "
      "retraining of every pick per seed")
_flag(flags.DEFINE_float, "flops_min", 0.95, "min MACs of every path, in millions")
_flag(flags.DEFINE_float, "flops_max", 1.15, "max MACs of every path, in millions")
_flag(flags.DEFINE_integer, "batch_size", 32, "search, tuner and retrain batch")
_flag(flags.DEFINE_integer, "search_epochs", 15,
      "search epochs (budget: epochs x steps x batch images)")
_flag(flags.DEFINE_integer, "steps_per_epoch", 100, "search steps per epoch")
_flag(flags.DEFINE_integer, "warmup_epochs", 5, "Cream's CE-only warm-up before distillation")
_flag(flags.DEFINE_float, "lr", 3.2, "search learning rate per 1024 images (scaled by batch)")
_flag(flags.DEFINE_enum, "prior", "release", ["release", "uniform"],
      "op prior of the path sampler of every supernet ('release': half the draws are MB6 5x5)")
_flag(flags.DEFINE_integer, "board_size", 5, "K, board entries")
_flag(flags.DEFINE_integer, "board_images", 4, "n, stored images per board entry")
_flag(flags.DEFINE_integer, "meta_interval", 50,
      "steps between meta-gradient updates (teacher meta)")
_flag(flags.DEFINE_integer, "select_bn_batches", 5,
      "BatchNorm re-estimation batches when scoring paths")
_flag(flags.DEFINE_integer, "tune_trials", 5, "keras-tuner trials (share the one-shot budget)")
_flag(flags.DEFINE_integer, "tune_epochs", 1, "epochs per tuner trial")
_flag(flags.DEFINE_integer, "tau_paths", 20,
      "random in-range paths: SPOS candidates, Kendall tau, row (e)")
_flag(flags.DEFINE_integer, "tau_seed", 1234, "seed of the random path set")
_flag(flags.DEFINE_list, "tau_supernets", "spos",
      "supernets whose ranking is correlated: spos, cream")
_flag(flags.DEFINE_integer, "retrain_epochs", 4, "standalone retraining epochs of every pick")
_flag(flags.DEFINE_float, "retrain_lr", 0.064,
      "RetrainConfig.lr: RMSprop peak rate per 1024 images")
_flag(flags.DEFINE_float, "retrain_dropout", 0.2, "dropout of the retrained child")
_flag(flags.DEFINE_float, "ema_decay", 0.9, "weight EMA of the retraining (short runs want ~0.9)")
_flag(flags.DEFINE_string, "workdir", "/tmp/cream_search_quality",
      "searches, tuner runs, retrainings")
_flag(flags.DEFINE_string, "out", "",
      "JSON of all raw results (default: WORKDIR/search_quality.json)")

METHODS = ("cream", "top1", "spos", "tuner", "random")
LABELS = {
    "cream": "(a) Cream (meta teacher)",
    "top1": "(b) Cream, top1 teacher",
    "spos": "(c) SPOS (no distillation)",
    "tuner": "(d) keras-tuner random search",
    "random": "(e) random paths in range",
}
TAU_SUPERNETS = ("spos", "cream")


# -- pure helpers (no TensorFlow; unit-tested) --------------------------------------------------

def budget_plan(search_epochs: int, steps_per_epoch: int, batch_size: int, tune_trials: int,
                tune_epochs: int) -> dict:
    """Training images each search method sees, matched across methods.

    One-shot searches: search_epochs x steps_per_epoch x batch_size. The tuner: tune_trials x
    tune_epochs x tune_steps x batch_size, tune_steps the largest count within that budget.
    Raises ValueError when the tuner cannot get even one step per trial epoch.
    """
    for name, v in (("search_epochs", search_epochs), ("steps_per_epoch", steps_per_epoch),
                    ("batch_size", batch_size), ("tune_trials", tune_trials),
                    ("tune_epochs", tune_epochs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    one_shot = search_epochs * steps_per_epoch * batch_size
    tune_steps = one_shot // (tune_trials * tune_epochs * batch_size)
    if tune_steps < 1:
        raise ValueError(f"the one-shot budget ({one_shot:,} images) is less than one batch per "
                         f"tuner trial epoch ({tune_trials} trials x {tune_epochs} epochs x "
                         f"{batch_size}); use fewer trials or a larger search")
    tuner_images = tune_trials * tune_epochs * tune_steps * batch_size
    return {"one_shot_images": one_shot, "search_steps": search_epochs * steps_per_epoch,
            "tune_steps_per_epoch": tune_steps, "tuner_images": tuner_images,
            "tuner_shortfall": one_shot - tuner_images}


def kendall_tau(x, y) -> float:
    """Kendall's tau-b of two equally long sequences: the library's `ranking.kendall_tau` (ties
    as scipy counts them, NaN when either is constant), refusing fewer than 2 pairs."""
    from cream_tf import ranking

    tau = ranking.kendall_tau(x, y)  # checks shapes and finiteness
    if len(x) < 2:
        raise ValueError("kendall_tau needs at least 2 pairs")
    return tau


def kendall_pvalue(x, y):
    """scipy's two-sided p-value of tau-b, or None without scipy (a test extra)."""
    try:
        from scipy import stats
    except ImportError:
        return None
    return float(stats.kendalltau(x, y).pvalue)


def settings_key(settings) -> str:
    """A short stable hash of a settings dict or dataclass, for workdir names.

    `trainer.search` resumes any workdir whose search signature matches, and the signature
    leaves out e.g. the learning rate; `retrain.retrain` returns any finished run. Keying the
    folders by every setting keeps a rerun with other settings from reusing stale results.
    """
    import dataclasses
    import hashlib
    import json

    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def mean_std(values):
    """(mean, sample standard deviation, count); std is 0.0 for one value, NaN for none."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if not n:
        return float("nan"), float("nan"), 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def validate(values: dict) -> list:
    """Problems with the settings (empty when they are usable); checked before anything runs."""
    problems = []
    positive = ("depth", "resolution", "seeds", "batch_size", "search_epochs", "steps_per_epoch",
                "board_size", "board_images", "meta_interval", "tune_trials", "tune_epochs",
                "retrain_epochs")
    for name in positive:
        if values[name] < 1:
            problems.append(f"--{name} must be >= 1, got {values[name]}")
    for name in ("width", "lr", "retrain_lr"):
        if not values[name] > 0:
            problems.append(f"--{name} must be > 0, got {values[name]}")
    if values["select_bn_batches"] < 0:
        problems.append(f"--select_bn_batches must be >= 0, got {values['select_bn_batches']}")
    if values["tau_paths"] < 2:
        problems.append(f"--tau_paths must be >= 2 (a ranking needs pairs), got "
                        f"{values['tau_paths']}")
    if not 0 <= values["warmup_epochs"] < values["search_epochs"]:
        problems.append(f"--warmup_epochs must be in [0, search_epochs={values['search_epochs']})"
                        f" so that Cream distils at all, got {values['warmup_epochs']}")
    if values["retrain_epochs"] < 2:
        problems.append("--retrain_epochs must be >= 2 (one warm-up epoch, then cosine decay)")
    if not 0 <= values["retrain_dropout"] < 1 or not 0 <= values["ema_decay"] < 1:
        problems.append("--retrain_dropout and --ema_decay must be in [0, 1)")
    if values["flops_min"] < 0 or values["flops_max"] <= 0 or \
            values["flops_min"] > values["flops_max"]:
        problems.append(f"--flops_min/--flops_max must satisfy 0 <= min <= max, max > 0; got "
                        f"{values['flops_min']}, {values['flops_max']}")
    if values["batch_size"] >= 1 and values["batch_size"] < max(values["board_images"], 4):
        problems.append(f"--batch_size must be >= board_images and the meta slice (4), got "
                        f"{values['batch_size']}")
    unknown = [s for s in values["tau_supernets"] if s not in TAU_SUPERNETS]
    if unknown or not values["tau_supernets"] or "spos" not in values["tau_supernets"]:
        problems.append(f"--tau_supernets must list spos and optionally cream, got "
                        f"{values['tau_supernets']}")
    if not problems:
        try:
            budget_plan(values["search_epochs"], values["steps_per_epoch"], values["batch_size"],
                        values["tune_trials"], values["tune_epochs"])
        except ValueError as e:
            problems.append(str(e))
    return problems


def table_rows(results: dict) -> list:
    """One row per method from the raw results: accuracies in percent, MACs in millions."""
    rows = []
    for method in METHODS:
        picks = results["picks"].get(method, [])
        acc = mean_std([100.0 * p["test_accuracy"] for p in picks if p.get("test_accuracy")
                        is not None])
        macs = mean_std([p["macs"] / 1e6 for p in picks])
        rows.append({"method": method, "label": LABELS[method], "test_mean": acc[0],
                     "test_std": acc[1], "n": acc[2], "macs_mean": macs[0],
                     "macs_min": min((p["macs"] / 1e6 for p in picks), default=float("nan")),
                     "macs_max": max((p["macs"] / 1e6 for p in picks), default=float("nan")),
                     "images": results["budget"]["tuner_images"] if method == "tuner" else
                     (0 if method == "random" else results["budget"]["one_shot_images"])})
    return rows


def markdown_table(rows: list) -> str:
    lines = ["| method | test acc. % (mean ± std) | n | MACs of the picks (M) | search images |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["n"]:
            acc = f"{r['test_mean']:.2f} ± {r['test_std']:.2f}"
            macs = (f"{r['macs_mean']:.3f}" if r["macs_min"] == r["macs_max"] else
                    f"{r['macs_mean']:.3f} ({r['macs_min']:.3f}-{r['macs_max']:.3f})")
        else:
            acc, macs = "n/a", "n/a"
        lines.append(f"| {r['label']} | {acc} | {r['n']} | {macs} | {r['images']:,} |")
    return "\n".join(lines)


# -- the benchmark ------------------------------------------------------------------------------

class _Bench:
    """The shared pieces (data, space, configs) and the per-method steps of one run."""

    def __init__(self, values: dict):
        from cream_tf import data as data_lib
        from cream_tf import flops
        from cream_tf import retrain as retrain_lib
        from cream_tf import tuner as tuner_lib
        from cream_tf.space import Space

        self.v = values
        self.splits, self.info = data_lib.load(values["dataset"], values["resolution"], seed=0)
        if self.splits.test is None:
            raise app.UsageError(f"--dataset {values['dataset']!r} has no test split; the table "
                                 f"needs held-out data that selection never reads")
        self.space = Space(values["space"], values["layout"], values["depth"],
                           values["resolution"], values["width"], self.info.num_classes)
        self.table = flops.cost_table(self.space)
        self.macs_range = tuner_lib.resolve_macs_range(
            self.space, (int(values["flops_min"] * 1e6), int(values["flops_max"] * 1e6)))
        self.budget = budget_plan(values["search_epochs"], values["steps_per_epoch"],
                                  values["batch_size"], values["tune_trials"],
                                  values["tune_epochs"])
        from cream_tf import select as select_lib

        # deterministic views for BatchNorm re-estimation and scoring, as selection takes them
        self.bn_train, self.held_out = select_lib.selection_inputs(self.splits, self.info,
                                                                   self.space.resolution)
        self.retrain_config = retrain_lib.RetrainConfig(
            epochs=values["retrain_epochs"], batch_size=values["batch_size"],
            lr=values["retrain_lr"], dropout=values["retrain_dropout"],
            ema_decay=values["ema_decay"], warmup_epochs=1.0, verbose=0)

    # paths
    def macs(self, path) -> int:
        return int(self.table.path_macs(path))

    def row(self, path, **extra) -> dict:
        from cream_tf import arch as arch_lib

        nested = [list(map(int, s)) for s in path]
        return {"path": nested, "arch": arch_lib.path_to_arch(path, self.space).to_paper(),
                "macs": self.macs(path), **extra}

    def random_paths(self) -> list:
        """`tau_paths` distinct random paths in the MACs range (uniform among them)."""
        from cream_tf import tuner as tuner_lib

        paths, seen, i = [], set(), 0
        while len(paths) < self.v["tau_paths"]:
            path = tuner_lib.sample_path_in_range(self.space, self.macs_range,
                                                  seed=[self.v["tau_seed"], i])
            i += 1
            key = tuple(map(tuple, path))
            if key not in seen:
                seen.add(key)
                paths.append(path)
            if i > 100 * self.v["tau_paths"]:
                raise app.UsageError(f"found only {len(paths)} distinct paths in the MACs range; "
                                     f"widen --flops_min/--flops_max or lower --tau_paths")
        return paths

    # phases
    def search(self, seed: int, kind: str):
        from cream_tf import data as data_lib
        from cream_tf import trainer

        v = self.v
        warmup = v["search_epochs"] if kind == "spos" else v["warmup_epochs"]
        config = trainer.SearchConfig(
            epochs=v["search_epochs"], steps_per_epoch=v["steps_per_epoch"],
            warmup_epochs=warmup, batch_size=v["batch_size"],
            learning_rate=v["lr"] * v["batch_size"] / 1024, macs_range=self.macs_range,
            prior=v["prior"],
            board_size=v["board_size"], board_images=v["board_images"],
            teacher="top1" if kind == "top1" else "meta", meta_interval=v["meta_interval"],
            seed=seed, verbose=0, checkpoint_interval=10 ** 6)
        train_ds, val_ds = data_lib.search_inputs(self.splits, self.info, self.space.resolution,
                                                  seed=seed)
        return trainer.search(self.space, train_ds, val_ds,
                              os.path.join(v["workdir"], f"seed{seed}",
                                           f"{kind}_{settings_key(config.to_dict())}"), config)

    def select(self, result) -> dict:
        from cream_tf import select as select_lib

        chosen = select_lib.select(self.space, result.supernet, result.board, self.bn_train,
                                   self.held_out, self.macs_range,
                                   bn_batches=self.v["select_bn_batches"], batch_size=64)
        best = chosen.best
        return {"path": best["path"], "supernet_val_accuracy": best["accuracy"],
                "board_score": best["board_score"],
                "board": [{"arch": r["paper"], "macs": r["macs"], "accuracy": r["accuracy"],
                           "board_score": r["board_score"]} for r in chosen.table]}

    def score_paths(self, result, paths) -> list:
        from cream_tf import select as select_lib

        return [select_lib.evaluate_path(self.space, result.supernet, p, self.bn_train,
                                         self.held_out, self.v["select_bn_batches"], 64)
                for p in paths]

    def tune(self, seed: int) -> dict:
        from cream_tf import data as data_lib
        from cream_tf import tuner as tuner_lib

        v = self.v
        r = self.space.resolution
        train_ds = data_lib.train_pipeline(self.splits.train, r,
                                           augment=data_lib.Augment.search(self.info), seed=seed,
                                           shuffle_buffer=self.info.shuffle_buffer, repeat=True)
        result = tuner_lib.tune(self.space, train_ds, self.held_out,
                                os.path.join(v["workdir"], f"seed{seed}", "tuner"),
                                max_trials=v["tune_trials"], epochs_per_trial=v["tune_epochs"],
                                batch_size=v["batch_size"], macs_range=self.macs_range,
                                algorithm="random", seed=seed,
                                steps_per_epoch=self.budget["tune_steps_per_epoch"], verbose=0)
        if result.best is None:
            raise RuntimeError(f"seed {seed}: no tuner trial completed")
        done = sum(t.status == "COMPLETED" for t in result.trials)
        return {"path": [list(s) for s in result.best.path],
                "trial_val_accuracy": result.best.val_accuracy, "trials_completed": done}

    def retrain(self, path, seed: int, name: str) -> dict:
        import keras

        from cream_tf import retrain as retrain_lib

        config = self.retrain_config.replace(seed=seed)
        flat = "".join(str(int(o)) for stage in path for o in stage)
        # keyed by path and recipe: a rerun reuses a finished retraining only when both match
        workdir = os.path.join(self.v["workdir"], f"retrain_{settings_key(config)}",
                               f"{name}_{flat}")
        keras.utils.set_random_seed(seed)
        result = retrain_lib.retrain(path, self.space, self.splits, self.info, workdir, config)
        keras.backend.clear_session()
        return {"test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy}


def _release(result):
    import gc

    import keras

    del result
    keras.backend.clear_session()
    gc.collect()


def machine() -> dict:
    import platform

    import keras
    import tensorflow as tf

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(l.split()[1]) for l in f if l.startswith("MemTotal"))
        mem = round(kb / 2 ** 20, 1)
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": mem, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "load_at_start": round(os.getloadavg()[0], 2)}


def main(argv):
    del argv
    values = {name: FLAGS[name].value for name in FLAGS if not name.startswith("help")}
    problems = validate(values)
    if problems:
        raise app.UsageError("; ".join(problems))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from cream_tf import cli

    tf.get_logger().setLevel("ERROR")  # the retracing notes of per-path evaluation
    logging.set_verbosity(logging.WARNING)  # checkpoint saver chatter
    started = time.time()
    out = values["out"] or os.path.join(values["workdir"], "search_quality.json")
    bench = _Bench(values)
    space, budget = bench.space, bench.budget
    lo, hi = bench.macs_range
    results = {"settings": {k: values[k] for k in sorted(values) if k in _SETTINGS},
               "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
               "machine": machine(), "space": str(space), "macs_range": [lo, hi],
               "dataset_sizes": bench.info.split_sizes, "budget": budget,
               "picks": {m: [] for m in METHODS}, "tau": [], "random_paths": [], "seconds": {}}

    def save():
        results["seconds"]["total"] = round(time.time() - started, 1)
        results["machine"]["load_now"] = round(os.getloadavg()[0], 2)
        cli.write_json(out, results)

    def timed(name, fn, *args):
        t = time.time()
        value = fn(*args)
        results["seconds"][name] = round(time.time() - t, 1)
        print(f"   {name}: {time.time() - t:.0f} s (elapsed {time.time() - started:.0f} s, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
        return value

    n_train = bench.info.split_sizes["train"]
    print(f"space {space}; MACs range [{lo / 1e6:.3f}M, {hi / 1e6:.3f}M] (space reaches "
          f"[{bench.table.min_macs / 1e6:.3f}M, {bench.table.max_macs / 1e6:.3f}M]); dataset "
          f"{values['dataset']} {bench.info.split_sizes}", flush=True)
    print(f"budget: one-shot {budget['search_steps']} steps x {values['batch_size']} = "
          f"{budget['one_shot_images']:,} training images ({budget['one_shot_images'] / n_train:.1f}"
          f" passes over train); tuner {values['tune_trials']} trials x {values['tune_epochs']} "
          f"epochs x {budget['tune_steps_per_epoch']} steps x {values['batch_size']} = "
          f"{budget['tuner_images']:,} ({budget['tuner_shortfall']:,} fewer)", flush=True)

    paths = bench.random_paths()
    results["random_paths"] = [bench.row(p) for p in paths]
    for seed in range(values["seeds"]):
        print(f"\n== seed {seed}", flush=True)
        for kind in ("cream", "top1"):
            result = timed(f"seed{seed}/{kind}/search", bench.search, seed, kind)
            pick = timed(f"seed{seed}/{kind}/select", bench.select, result)
            if kind == "cream" and "cream" in values["tau_supernets"]:
                scores = timed(f"seed{seed}/cream/score_random", bench.score_paths, result, paths)
                results["tau"].append({"seed": seed, "supernet": "cream", "scores": scores})
            _release(result)
            results["picks"][kind].append({"seed": seed, **bench.row(
                _as_path(pick["path"]), **{k: pick[k] for k in pick if k != "path"})})
            save()
        result = timed(f"seed{seed}/spos/search", bench.search, seed, "spos")
        scores = timed(f"seed{seed}/spos/score_random", bench.score_paths, result, paths)
        _release(result)
        results["tau"].append({"seed": seed, "supernet": "spos", "scores": scores})
        best = int(np.argmax(scores))
        results["picks"]["spos"].append({"seed": seed, **bench.row(
            paths[best], supernet_val_accuracy=scores[best], candidates=len(paths))})
        save()
        tuned = timed(f"seed{seed}/tuner/tune", bench.tune, seed)
        results["picks"]["tuner"].append({"seed": seed, **bench.row(
            _as_path(tuned["path"]), **{k: tuned[k] for k in tuned if k != "path"})})
        save()
        for method in ("cream", "top1", "spos", "tuner"):
            pick = results["picks"][method][seed]
            pick.update(timed(f"seed{seed}/{method}/retrain", bench.retrain,
                              _as_path(pick["path"]), seed, f"seed{seed}_{method}"))
            print(f"   {method:6s} {pick['arch']}  {pick['macs'] / 1e6:.3f}M MACs  test "
                  f"{100 * pick['test_accuracy']:.2f}%", flush=True)
            save()

    print(f"\n== {len(paths)} random in-range paths, retrained standalone", flush=True)
    for i, path in enumerate(paths):
        row = results["random_paths"][i]
        row.update(timed(f"random{i}/retrain", bench.retrain, path, i, f"random{i:02d}"))
        results["picks"]["random"].append({"seed": i, **row})
        save()

    standalone = [100.0 * r["test_accuracy"] for r in results["random_paths"]]
    for entry in results["tau"]:
        entry["tau"] = kendall_tau(entry["scores"], standalone)
        entry["pvalue"] = kendall_pvalue(entry["scores"], standalone)
    save()
    report(results, values)


def _as_path(nested):
    return tuple(tuple(int(o) for o in stage) for stage in nested)


_SETTINGS = ("dataset", "prior", "space", "layout", "depth", "resolution", "width", "seeds",
             "flops_min", "flops_max", "batch_size", "search_epochs", "steps_per_epoch",
             "warmup_epochs", "lr", "board_size", "board_images", "meta_interval",
             "select_bn_batches", "tune_trials", "tune_epochs", "tau_paths", "tau_seed",
             "tau_supernets", "retrain_epochs", "retrain_lr", "retrain_dropout", "ema_decay",
             "workdir", "out")


def report(results: dict, values: dict):
    rows = table_rows(results)
    standalone = [100.0 * r["test_accuracy"] for r in results["random_paths"]]
    print("\n== search quality (test split; retrained the same way)")
    print(markdown_table(rows))
    print(f"\nrow (e) is the mean ± std over {len(standalone)} random paths (one retraining each); "
          f"rows (a)-(d) over {values['seeds']} seeds. Best of the random paths: "
          f"{max(standalone):.2f}%, worst {min(standalone):.2f}%.")
    for supernet in TAU_SUPERNETS:
        taus = [t for t in results["tau"] if t["supernet"] == supernet]
        if taus:
            m, s, n = mean_std([t["tau"] for t in taus])
            each = ", ".join(f"seed {t['seed']}: {t['tau']:.3f}"
                             + (f" (p={t['pvalue']:.2f})" if t.get("pvalue") is not None else "")
                             for t in taus)
            print(f"Kendall tau, {supernet} supernet score vs standalone test accuracy of "
                  f"{len(standalone)} random paths: {m:.3f} ± {s:.3f} ({each})")
    b = results["budget"]
    print(f"budget: one-shot {b['one_shot_images']:,} training images per search; tuner "
          f"{b['tuner_images']:,}; retraining of each pick not counted")
    print(f"wall time {results['seconds']['total'] / 60:.1f} min; results in "
          f"{values['out'] or os.path.join(values['workdir'], 'search_quality.json')}")


def _entry():
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in sys.argv[1:]):
        print(__doc__)
        print(FLAGS.get_help())
        sys.exit(0)
    try:
        argv = FLAGS(sys.argv)
    except flags.Error as e:
        sys.exit(f"search_quality.py: {e}")
    app.run(lambda _: main(argv), argv=sys.argv[:1])


if __name__ == "__main__":
    _entry()
