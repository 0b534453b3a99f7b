"""The pipeline behind run.py: validate everything first, then search, select, retrain, export.

Every phase reads what the earlier ones left in the workdir, so each `--mode` can be rerun alone,
and a rerun after a crash resumes (the search from its checkpoint, retraining from its backup).
A workdir has one live run at a time (`workdir_lock`). Bad input raises `cli.UsageError` before
anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

from cream_tf import cli
from cream_tf.errors import InputError
from cream_tf.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock

# Settings that define a search: a workdir holds one search, so these must match on a rerun.
SEARCH_KEYS = ("dataset", "val_fraction", "space", "layout", "depth", "resolution", "width",
               "num_classes", "seed", "batch_size", "search_epochs", "steps_per_epoch", "lr",
               "weight_decay", "warmup_epochs", "board_size", "board_images", "board_gap",
               "teacher", "meta_interval", "meta_lr", "flops_min", "flops_max", "prior",
               "mixed_precision")
CONFIG_FILE = "run_config.json"


@dataclasses.dataclass
class Settings:
    """The validated flags of one run."""

    values: dict

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _positive(values, names, allow_zero=()):
    for name in names:
        v = values[name]
        if v is None or v < 0 or (v == 0 and name not in allow_zero):
            bound = ">= 0" if name in allow_zero else "> 0"
            raise cli.UsageError(f"--{name} must be {bound}, got {v}")


def validate(flag_values) -> Settings:
    """Checks every flag value (and their combinations) and returns the settings."""
    values = {name: flag_values[name].value for name in flag_values
              if name in flag_values and not name.startswith("help")}
    try:
        depth = [int(d) for d in values["depth"]]
    except ValueError:
        raise cli.UsageError(f"--depth takes one int or five, comma-separated, got "
                             f"{','.join(values['depth'])!r}") from None
    values["depth"] = depth[0] if len(depth) == 1 else depth
    _positive(values, ["batch_size", "board_size", "board_images", "meta_interval",
                       "select_bn_batches", "retrain_batch_size", "resolution", "width",
                       "checkpoint_every", "tune_trials", "tune_epochs", "max_bad_steps"])
    _positive(values, ["search_epochs", "warmup_epochs", "steps_per_epoch", "lr", "meta_lr",
                       "weight_decay", "board_gap", "flops_min", "flops_max", "retrain_epochs",
                       "retrain_lr", "num_classes", "val_fraction"],
              allow_zero=("search_epochs", "warmup_epochs", "steps_per_epoch", "weight_decay",
                          "board_gap", "flops_min", "flops_max", "retrain_epochs",
                          "num_classes", "meta_lr", "lr", "val_fraction"))
    if values["flops_max"] and values["flops_min"] > values["flops_max"]:
        raise cli.UsageError(f"--flops_min ({values['flops_min']}M) is above --flops_max "
                             f"({values['flops_max']}M)")
    if not 0 <= values["retrain_dropout"] < 1:
        raise cli.UsageError(f"--retrain_dropout must be in [0, 1), got {values['retrain_dropout']}")
    if values["retrain_epochs"] and not (
            0 <= values["retrain_warmup_epochs"] < values["retrain_epochs"]):
        raise cli.UsageError(f"--retrain_warmup_epochs ({values['retrain_warmup_epochs']}) must "
                             f"be in [0, --retrain_epochs={values['retrain_epochs']})")
    if not 0 <= values["ema_decay"] < 1:
        raise cli.UsageError(f"--ema_decay must be in [0, 1), got {values['ema_decay']}")
    if values["num_classes"] == 1:
        raise cli.UsageError("--num_classes must be 0 (the dataset's) or at least 2")
    if values["warmup_epochs"] > values["search_epochs"] and values["search_epochs"]:
        raise cli.UsageError(f"--warmup_epochs ({values['warmup_epochs']}) exceeds "
                             f"--search_epochs ({values['search_epochs']}): distillation would "
                             f"never start")
    if values["mode"] != "profile":
        try:
            _space(values, values["num_classes"] or 10)
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    return Settings(values)


def _space(values, num_classes):
    from cream_tf.space import Space

    return Space(values["space"], values["layout"], values["depth"], values["resolution"],
                 values["width"], num_classes)


def check_workdir(settings: Settings) -> str:
    """A workdir holds one run: refuse a non-empty folder of something else, or of a run with
    different search settings. Writes nothing."""
    workdir = settings.workdir
    config_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(workdir):
        raise cli.UsageError(f"--workdir {workdir!r} is a file; give a folder")
    if os.path.exists(config_path):
        saved = cli.read_json(config_path)
        diff = [k for k in SEARCH_KEYS if saved.get(k) != _jsonable(settings.values.get(k))]
        if diff:
            changes = ", ".join(f"--{k} ({saved.get(k)!r} there, {settings.values.get(k)!r} now)"
                                for k in diff)
            raise cli.UsageError(f"--workdir {workdir!r} holds a run with other settings: "
                                 f"{changes}; use a new --workdir or the same settings")
    elif os.path.isdir(workdir) and set(os.listdir(workdir)) - {LOCK_FILE}:
        raise cli.UsageError(f"--workdir {workdir!r} is not empty and holds no cream_tf run "
                             f"({CONFIG_FILE} missing); give a new or empty folder")
    return config_path


def _jsonable(value):
    return json.loads(json.dumps(value))


def _write_config(settings: Settings, config_path: str):
    if not os.path.exists(config_path):
        cli.write_json(config_path, {k: settings.values.get(k) for k in SEARCH_KEYS})


class Job:
    """One run of the pipeline over a workdir."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.workdir = settings.workdir
        self.search_dir = os.path.join(self.workdir, "search")
        self.select_path = os.path.join(self.workdir, "select", "selection.json")
        self.retrain_dir = os.path.join(self.workdir, "retrain")
        self.export_dir = settings.export_dir or os.path.join(self.workdir, "export")
        self._data = None
        self._strategy = None
        self._search_result = None

    # -- shared pieces -------------------------------------------------------------------------
    def data(self):
        if self._data is None:
            from cream_tf import data as data_lib

            try:
                splits, info = data_lib.load(self.s.dataset, self.s.resolution, self.s.data_dir,
                                             seed=self.s.seed, val_fraction=self.s.val_fraction)
            except data_lib.DataError as e:
                raise cli.UsageError(str(e)) from None
            if self.s.num_classes and self.s.num_classes != info.num_classes:
                raise cli.UsageError(f"--num_classes {self.s.num_classes} does not match dataset "
                                     f"{self.s.dataset!r}, which has {info.num_classes} classes")
            self._data = (splits, info)
        return self._data

    @property
    def space(self):
        return _space(self.s.values, self.data()[1].num_classes)

    @property
    def strategy(self):
        if self._strategy is None:
            self._strategy = cli.make_strategy(self.s.strategy)
        return self._strategy

    def search_config(self):
        from cream_tf import trainer

        _, info = self.data()
        steps = self.s.steps_per_epoch or max(1, info.split_sizes["train"] // self.s.batch_size)
        table_range = None
        if self.s.flops_min or self.s.flops_max:
            table_range = (int(self.s.flops_min * 1e6),
                           int(self.s.flops_max * 1e6) if self.s.flops_max else None)
        try:
            return trainer.SearchConfig(
                epochs=self.s.search_epochs, steps_per_epoch=steps,
                warmup_epochs=self.s.warmup_epochs, batch_size=self.s.batch_size,
                learning_rate=self.s.lr * self.s.batch_size / 1024, weight_decay=self.s.weight_decay, prior=self.s.prior,
                macs_range=table_range, board_size=self.s.board_size,
                board_images=self.s.board_images, board_gap=self.s.board_gap,
                teacher=self.s.teacher, meta_interval=self.s.meta_interval,
                meta_lr=self.s.meta_lr, seed=self.s.seed,
                checkpoint_interval=self.s.checkpoint_every, jit_compile=self.s.jit_compile,
                max_bad_steps=self.s.max_bad_steps,
                mixed_precision=None if self.s.mixed_precision == "none" else self.s.mixed_precision)
        except ValueError as e:
            raise cli.UsageError(str(e)) from None

    def macs_range(self):
        low = int(self.s.flops_min * 1e6) if self.s.flops_min else None
        high = int(self.s.flops_max * 1e6) if self.s.flops_max else None
        return low, high

    # -- phases --------------------------------------------------------------------------------
    def search(self):
        """Trains (or resumes, or just reloads when finished) the supernet."""
        if self._search_result is not None:
            return self._search_result
        from cream_tf import data as data_lib
        from cream_tf import trainer

        splits, info = self.data()
        space = self.space
        config = self.search_config()
        train_ds, val_ds = data_lib.search_inputs(splits, info, space.resolution,
                                                  seed=self.s.seed)
        history_path = os.path.join(self.search_dir, "board_history.json")
        history = cli.read_json(history_path) if os.path.exists(history_path) else []
        board_json = os.path.join(self.search_dir, "board.json")
        chief = _is_chief(self.strategy)
        first = []

        def record(step, logs):  # the trainer has just rewritten board.json when it changed
            if not first:  # resumed at `step`: drop what a killed run recorded after its checkpoint
                first.append(step)
                history[:] = [h for h in history if h["step"] <= step]
            if logs.get("board_changed"):
                history.append({"step": step + 1, "entries": cli.read_json(board_json)})
                if chief:  # written with the board, so a kill -9 loses no history
                    cli.write_json(history_path, history)

        _announce(f"search: {space} on {info.spec}, {config.total_steps} steps of "
                  f"{config.batch_size} images")
        try:
            result = trainer.search(space, train_ds, val_ds, self.search_dir, config,
                                    self.strategy, callback=record)
        except InputError as e:  # bad input found while working; a bug keeps its traceback
            raise cli.UsageError(str(e)) from None
        finally:
            if first and chief:  # steps ran (a finished search is returned as it is)
                cli.write_json(history_path, history)
        self._search_result = result
        return result

    def selection(self):
        if not os.path.exists(self.select_path):
            self.select()
        return cli.read_json(self.select_path)

    def trained_search(self):
        """The search's supernet and board: the one this run just trained, or its checkpoint.

        Loaded without a trainer, so selecting never resumes a search by accident; a search
        with steps left is a usage error unless --use_unfinished_search.
        """
        if self._search_result is not None:
            return self._search_result
        from cream_tf import trainer

        space = self.space
        try:
            return trainer.load_search(space, self.search_dir, self.search_config(),
                                       allow_unfinished=self.s.use_unfinished_search)
        except trainer.UnfinishedSearch as e:
            raise cli.UsageError(f"{e} (--mode=search finishes it; --use_unfinished_search "
                                 f"selects from it as it is)") from None

    def select(self):
        from cream_tf import data as data_lib
        from cream_tf import select as select_lib

        result = self.trained_search()
        splits, info = self.data()
        space = self.space
        bn_train = data_lib.eval_pipeline(splits.train, space.resolution,
                                          crop_pct=info.eval_crop_pct)
        held_out = data_lib.eval_pipeline(splits.val, space.resolution,
                                          crop_pct=info.eval_crop_pct)
        _announce(f"select: evaluating {len(result.board.entries())} board paths on held-out data")
        try:
            chosen = select_lib.select(space, result.supernet, result.board, bn_train, held_out,
                                       self.macs_range(), bn_batches=self.s.select_bn_batches,
                                       batch_size=min(self.s.batch_size, 256))
        except InputError as e:  # bad input found while working; a bug keeps its traceback
            raise cli.UsageError(str(e)) from None
        print(chosen.to_text())
        payload = {"best": chosen.best, "table": list(chosen.table),
                   "macs_range": list(chosen.macs_range)}
        if _is_chief(self.strategy):
            cli.write_json(self.select_path, payload)
        return payload

    def architecture(self):
        """--arch (a zoo name or any architecture string) or the selected path."""
        from cream_tf import arch as arch_lib
        from cream_tf import zoo

        space = self.space
        if self.s.arch:
            text = zoo.get(self.s.arch).architecture if self.s.arch in zoo.ZOO else self.s.arch
            try:
                return arch_lib.parse(text, space)
            except arch_lib.ArchError as e:
                raise cli.UsageError(f"--arch: {e}") from None
        return arch_lib.path_to_arch(self.selection()["best"]["path"], space)

    def _retrain_config(self, retrain_lib):
        return retrain_lib.RetrainConfig(
            epochs=self.s.retrain_epochs, batch_size=self.s.retrain_batch_size,
            lr=self.s.retrain_lr,  # per 1024 images: RetrainConfig scales it by the batch size
            dropout=self.s.retrain_dropout, ema_decay=self.s.ema_decay, seed=self.s.seed,
            warmup_epochs=self.s.retrain_warmup_epochs)

    def retrain(self):
        from cream_tf import retrain as retrain_lib

        splits, info = self.data()
        space = self.space
        arch = self.architecture()
        try:
            config = self._retrain_config(retrain_lib)
        except ValueError as e:
            raise cli.UsageError(f"retrain settings: {e}") from None
        _announce(f"retrain: {arch.to_paper()} for {config.epochs} epochs")
        workdir, scratch = self.retrain_dir, None
        if not _is_chief(self.strategy):
            # Workers train in lockstep with the chief but write to a throw-away copy of its
            # folder (so they resume from the same epoch), removed afterwards.
            scratch = tempfile.mkdtemp(prefix="cream_tf_retrain_worker_")
            workdir = os.path.join(scratch, "retrain")
            if os.path.isdir(self.retrain_dir):
                shutil.copytree(self.retrain_dir, workdir)
        try:
            result = retrain_lib.retrain(arch, space, splits, info, workdir, config,
                                         self.strategy)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        # retrain/result.json is retrain_lib's alone: it reads it back to skip a finished run
        return {"architecture": arch.to_paper(), "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy, "final": result.final_path,
                "best": result.best_path}

    def trained_model(self):
        """The retrained network (EMA weights when on), retraining first if needed."""
        import keras

        final = os.path.join(self.retrain_dir, "final.keras")
        if not os.path.exists(final):
            self.retrain()
        return keras.models.load_model(final, compile=False)

    def export(self):
        from cream_tf import data as data_lib
        from cream_tf import export as export_lib

        model = self.trained_model()
        splits, info = self.data()
        space = self.space
        name = self.s.model_name
        os.makedirs(self.export_dir, exist_ok=True)
        _announce(f"export: {name} to {self.export_dir}")
        held_out = data_lib.eval_pipeline(splits.test if splits.test is not None else splits.val,
                                          space.resolution, batch_size=256,
                                          crop_pct=info.eval_crop_pct)
        calibration = data_lib.eval_pipeline(splits.train, space.resolution, batch_size=32,
                                             crop_pct=info.eval_crop_pct).take(8)
        progress = _ExportProgress(self.export_dir, os.path.join(self.retrain_dir, "final.keras"))
        try:
            keras_path = progress.make("keras", lambda: export_lib.export_keras(
                model, os.path.join(self.export_dir, f"{name}.keras"), overwrite=self.s.overwrite))
            serving = progress.make("saved_model", lambda: export_lib.export_saved_model(
                model, self.export_dir, name, class_names=list(info.class_names) or None))
            fp32 = progress.make("tflite_fp32", lambda: export_lib.export_tflite(
                model, os.path.join(self.export_dir, f"{name}.tflite"),
                overwrite=self.s.overwrite))
            int8 = progress.make("tflite_int8", lambda: export_lib.export_tflite(
                model, os.path.join(self.export_dir, f"{name}_int8.tflite"),
                quantization="int8", representative_data=calibration,
                overwrite=self.s.overwrite))
        except export_lib.ExportError as e:
            raise cli.UsageError(f"{e} (pass --overwrite to replace it)") from None
        # batch by batch: memory is bounded by the batch, not by the held-out split
        accuracy = export_lib.compare_accuracy(model, {"tflite_fp32": fp32, "tflite_int8": int8},
                                               held_out)
        report = {"keras": keras_path, "saved_model": serving, "tflite_fp32": fp32,
                  "tflite_int8": int8, "accuracy": accuracy,
                  "held_out_split": "test" if splits.test is not None else "val"}
        cli.write_json(os.path.join(self.export_dir, "export_report.json"), report)
        progress.finish()
        return report

    def tune(self):
        """--mode=tune: keras-tuner search of the same space, each trial trained standalone."""
        from cream_tf import data as data_lib
        from cream_tf import tuner

        splits, info = self.data()
        space = self.space
        train_ds = data_lib.train_pipeline(splits.train, space.resolution,
                                           augment=data_lib.Augment.search(info),
                                           seed=self.s.seed, shuffle_buffer=info.shuffle_buffer,
                                           repeat=False)
        val_ds = data_lib.eval_pipeline(splits.val, space.resolution, crop_pct=info.eval_crop_pct)
        _announce(f"tune: {self.s.tune_trials} keras-tuner trials ({self.s.tune_algorithm}) of "
                  f"{self.s.tune_epochs} epochs")
        try:
            result = tuner.tune(space, train_ds, val_ds, os.path.join(self.workdir, "tune"),
                                max_trials=self.s.tune_trials,
                                epochs_per_trial=self.s.tune_epochs,
                                batch_size=self.s.retrain_batch_size,
                                macs_range=self.macs_range(), algorithm=self.s.tune_algorithm,
                                seed=self.s.seed)
        except InputError as e:  # bad input found while working; a bug keeps its traceback
            raise cli.UsageError(str(e)) from None
        print(result)
        return result

    def plots(self, arch):
        """The found network drawn like the paper's figures, and the board over the search."""
        from cream_tf import plots

        history_path = os.path.join(self.search_dir, "board_history.json")
        made = [plots.draw_architecture(arch, self.space,
                                        os.path.join(self.workdir, "architecture.png"))]
        if os.path.exists(history_path):
            low, high = self.macs_range()
            shade = (low / 1e6 if low else 0.0, high / 1e6) if high else None
            made.append(plots.plot_board(cli.read_json(history_path),
                                         os.path.join(self.workdir, "board.png"),
                                         flops_range=shade))
        return [m for m in made if m]


class _ExportProgress:
    """Lets a rerun after a crash in the export phase keep the files it already wrote.

    Every export is atomic, and an existing file is an error unless --overwrite. Without a record,
    a run killed between two exports could never finish: its own first file would block the
    rerun. So each finished export is recorded in `.export_progress.json` together with the
    size and mtime of the model it came from; a rerun reuses recorded files of the same model and
    the record is removed once `export_report.json` is written.
    """

    def __init__(self, export_dir: str, model_path: str):
        self.path = os.path.join(export_dir, ".export_progress.json")
        stat = os.stat(model_path)
        self.source = {"model": os.path.abspath(model_path), "size": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns}
        done = {}
        if os.path.exists(self.path):
            try:
                record = cli.read_json(self.path)
            except (OSError, ValueError):
                record = {}
            if record.get("source") == self.source:
                done = {k: v for k, v in record.get("done", {}).items() if os.path.exists(v)}
        self.done = done

    def make(self, key: str, export):
        if key in self.done:
            print(f"  {key}: kept {self.done[key]} from the interrupted export", flush=True)
            return self.done[key]
        self.done[key] = export()
        cli.write_json(self.path, {"source": self.source, "done": self.done})
        return self.done[key]

    def finish(self):
        if os.path.exists(self.path):
            os.remove(self.path)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if not task_type:
        return True
    return task_type == "chief" or (task_type == "worker" and not resolver.task_id and
                                    "chief" not in resolver.cluster_spec().as_dict())


def _announce(text: str):
    print(f"\n== {text}", flush=True)


def profile(settings: Settings):
    """--mode=profile: the MACs/params table of a zoo name or an architecture string."""
    from cream_tf import arch as arch_lib
    from cream_tf import child, flops, zoo

    if not settings.arch:
        raise cli.UsageError(f"--mode=profile needs --arch: a zoo name ({', '.join(zoo.names())}) "
                             f"or an architecture string")
    if settings.arch in zoo.ZOO:
        model = zoo.build(settings.arch, num_classes=settings.num_classes or 1000)
        title = settings.arch
    else:
        try:
            space = _space(settings.values, settings.num_classes or 1000)
            arch = arch_lib.parse(settings.arch, space)
        except (ValueError, arch_lib.ArchError) as e:
            raise cli.UsageError(f"--arch: {e}") from None
        model = child.build(arch, space)
        title = arch.to_paper()
    result = flops.profile(model)
    print(f"{title} at {model.input_shape[1]}x{model.input_shape[2]}: {result}")
    print(result.table())
    return result


def run(flag_values):
    import warnings

    import tensorflow as tf

    if "verbosity" in flag_values and flag_values["verbosity"].value < 0:
        tf.get_logger().setLevel("ERROR")  # e.g. the retracing notes of per-path evaluation
    # the LiteRT successor of tf.lite.Interpreter is optional; the old one works in TF 2.21
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    settings = validate(flag_values)
    if settings.mode == "profile":
        return profile(settings)
    config_path = check_workdir(settings)
    job = Job(settings)
    # before any other TensorFlow op: multi-worker collectives are configured at start-up
    strategy = job.strategy
    if settings.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    job.data()  # a bad dataset fails here, before anything is written
    if settings.arch:
        job.architecture()
    lock = WorkdirLock(settings.workdir)
    if _is_chief(strategy):  # the other workers of a multi-worker run share the chief's run
        try:
            lock.acquire()
        except WorkdirBusy as e:
            raise cli.UsageError(str(e)) from None
    try:
        return _run_phases(settings, job, strategy, config_path)
    finally:
        lock.release()


def _run_phases(settings: Settings, job: Job, strategy, config_path: str):
    if _is_chief(strategy):
        _write_config(settings, config_path)
    started = time.time()
    if settings.mode == "tune":
        return job.tune()
    if settings.mode in ("search", "all"):
        job.search()
    if settings.mode in ("select", "all"):
        if settings.mode == "select" or not os.path.exists(job.select_path):
            job.select()
    if settings.mode in ("retrain", "all"):
        if settings.mode == "retrain" or not os.path.exists(
                os.path.join(job.retrain_dir, "result.json")):
            job.retrain()
    report = None
    report_path = os.path.join(job.export_dir, "export_report.json")
    if not _is_chief(strategy):  # exports, plots and the summary are the chief's alone
        return None
    if settings.mode in ("export", "all"):
        if settings.mode == "export" or not os.path.exists(report_path):
            report = job.export()
        else:
            report = cli.read_json(report_path)
    if settings.mode == "all":
        summarize(job, report, time.time() - started)
    return None


def summarize(job: Job, report, seconds: float):
    from cream_tf import flops, child

    arch = job.architecture()
    space = job.space
    model_profile = flops.profile(child.build(arch, space))
    retrain = cli.read_json(os.path.join(job.retrain_dir, "result.json"))
    pictures = job.plots(arch)
    summary = {
        "architecture": arch.to_paper(), "blocks": arch.to_blocks(space),
        "macs": model_profile.macs, "params": model_profile.params,
        "val_accuracy": retrain["val_accuracy"], "test_accuracy": retrain["test_accuracy"],
        "exports": {k: report[k] for k in ("keras", "saved_model", "tflite_fp32", "tflite_int8")},
        "export_accuracy": report["accuracy"], "pictures": pictures,
        "seconds": round(seconds, 1),
    }
    cli.write_json(os.path.join(job.workdir, "summary.json"), summary)
    held = "test" if retrain["test_accuracy"] is not None else "val"
    acc = retrain["test_accuracy"] if held == "test" else retrain["val_accuracy"]
    lines = [
        "", "== summary",
        f"architecture : {summary['architecture']}",
        f"MACs / params: {model_profile.macs / 1e6:.2f}M / {model_profile.params / 1e6:.3f}M",
        f"accuracy     : {100 * acc:.2f}% on held-out {held} data "
        f"({job.data()[1].num_classes} classes)",
        f"keras file   : {report['keras']}",
        f"SavedModel   : {report['saved_model']}",
        f"TFLite       : {report['tflite_fp32']}, {report['tflite_int8']}",
        f"pictures     : {', '.join(pictures) if pictures else 'none (pip install matplotlib)'}",
        f"workdir      : {job.workdir} (TensorBoard: tensorboard --logdir {job.search_dir}/logs)",
    ]
    print("\n".join(lines), flush=True)
    return summary
