"""The pipeline behind run.py: with every setting checked (`settings.Settings`), search, select,
retrain and export.

Every phase reads what the earlier ones left in the workdir, so each `--mode` can be rerun alone,
and a rerun after a crash resumes (the search from its checkpoint, retraining from its backup).
A workdir has one live run at a time (`workdir_lock`). Bad input raises `cli.UsageError` before
anything is written.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from cream_tf import cli
from cream_tf import settings as settings_lib
from cream_tf.errors import InputError
from cream_tf.run_identity import RunIdentity
from cream_tf.settings import Settings
from cream_tf.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock

CONFIG_FILE = "run_config.json"
SEARCH_KEYS = settings_lib.SEARCH_KEYS  # job.SEARCH_KEYS: their first home


def run_identity(settings: Settings) -> RunIdentity:
    """The run's identity as run_config.json records it: the search settings, named by flag."""
    return RunIdentity(settings.workdir, CONFIG_FILE, settings.search_identity(), noun="run",
                       name=lambda key: f"--{key}")


def check_workdir(settings: Settings) -> str:
    """A workdir holds one run: refuse a non-empty folder of something else, or of a run with
    different search settings. Writes nothing."""
    workdir = settings.workdir
    identity = run_identity(settings)
    if os.path.isfile(workdir):
        raise cli.UsageError(f"--workdir {workdir!r} is a file; give a folder")
    if os.path.exists(identity.path):
        try:
            identity.check()
        except InputError as e:
            raise cli.UsageError(str(e)) from None
    elif os.path.isdir(workdir) and set(os.listdir(workdir)) - {LOCK_FILE}:
        raise cli.UsageError(f"--workdir {workdir!r} is not empty and holds no cream_tf run "
                             f"({CONFIG_FILE} missing); give a new or empty folder")
    return identity.path


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
        self._space = None
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
        """The search space, with the dataset's classes (made once, after the data)."""
        if self._space is None:
            self._space = self.s.make_space(self.data()[1].num_classes)
        return self._space

    @property
    def strategy(self):
        if self._strategy is None:
            self._strategy = cli.make_strategy(self.s.strategy)
        return self._strategy

    @property
    def chief(self) -> bool:
        """Whether this process writes the run's files (every process but multi-worker's others)."""
        return _is_chief(self.strategy)

    def search_config(self):
        """The search's config, its epochs counted in the training split's batches."""
        return self.s.search_config(self.data()[1].split_sizes["train"])

    # -- phases --------------------------------------------------------------------------------
    def search(self):
        """Trains (or resumes, or just reloads when finished) the supernet."""
        if self._search_result is not None:
            return self._search_result
        from cream_tf import data as data_lib
        from cream_tf import search as search_lib

        splits, info = self.data()
        space = self.space
        config = self.search_config()
        train_ds, val_ds = data_lib.search_inputs(splits, info, space.resolution,
                                                  seed=self.s.seed)
        history_path = os.path.join(self.search_dir, "board_history.json")
        history = cli.read_json(history_path) if os.path.exists(history_path) else []
        board_json = os.path.join(self.search_dir, "board.json")
        chief = self.chief
        first = []

        def record(step, logs):  # the search has just rewritten board.json when it changed
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
            result = search_lib.search(space, train_ds, val_ds, self.search_dir, config,
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

        Loaded without training, so selecting never resumes a search by accident; a search
        with steps left is a usage error unless --use_unfinished_search.
        """
        if self._search_result is not None:
            return self._search_result
        from cream_tf import search as search_lib

        space = self.space
        try:
            return search_lib.load_search(space, self.search_dir, self.search_config(),
                                          allow_unfinished=self.s.use_unfinished_search)
        except search_lib.UnfinishedSearch as e:
            raise cli.UsageError(f"{e} (--mode=search finishes it; --use_unfinished_search "
                                 f"selects from it as it is)") from None

    def select(self):
        from cream_tf import select as select_lib

        result = self.trained_search()
        splits, info = self.data()
        space = self.space
        bn_train, held_out = select_lib.selection_inputs(splits, info, space.resolution)
        _announce(f"select: evaluating {len(result.board.entries())} board paths on held-out data")
        try:
            chosen = select_lib.select(space, result.supernet, result.board, bn_train, held_out,
                                       self.s.macs_range, bn_batches=self.s.select_bn_batches,
                                       batch_size=min(self.s.batch_size, 256))
        except InputError as e:  # bad input found while working; a bug keeps its traceback
            raise cli.UsageError(str(e)) from None
        print(chosen.to_text())
        payload = {"best": chosen.best, "table": list(chosen.table),
                   "macs_range": list(chosen.macs_range)}
        if self.chief:
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

    def retrain(self):
        from cream_tf import retrain as retrain_lib

        splits, info = self.data()
        space = self.space
        arch = self.architecture()
        config = self.s.retrain_config()
        _announce(f"retrain: {arch.to_paper()} for {config.epochs} epochs")
        workdir, scratch = self.retrain_dir, None
        if not self.chief:
            # Workers train in lockstep with the chief but write to a throw-away copy of its
            # folder (so they resume from the same epoch), removed afterwards.
            scratch = tempfile.mkdtemp(prefix="cream_tf_retrain_worker_")
            workdir = os.path.join(scratch, "retrain")
            if os.path.isdir(self.retrain_dir):
                shutil.copytree(self.retrain_dir, workdir)
        try:
            result = retrain_lib.retrain(arch, space, splits, info, workdir, config,
                                         self.strategy)
        except InputError as e:  # e.g. retrain/ holds another architecture's retraining
            raise cli.UsageError(_retrain_remedy(str(e), self.retrain_dir)) from None
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        # retrain/result.json is retrain_lib's alone: it reads it back to skip a finished run
        return {"architecture": arch.to_paper(), "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy, "final": result.final_path,
                "best": result.best_path}

    def check_retrained(self):
        """A finished retraining in this workdir is of the architecture this run exports."""
        from cream_tf import retrain as retrain_lib

        try:
            retrain_lib.retrain_identity(self.architecture(), self.space, self.retrain_dir).check()
        except InputError as e:
            raise cli.UsageError(_retrain_remedy(str(e), self.retrain_dir)) from None

    def trained_model(self):
        """The retrained network (EMA weights when on), retraining first if needed."""
        import keras

        final = os.path.join(self.retrain_dir, "final.keras")
        if not os.path.exists(final):
            self.retrain()
        else:
            self.check_retrained()
        return keras.models.load_model(final, compile=False)

    def export(self):
        from cream_tf import data as data_lib
        from cream_tf import export as export_lib

        model = self.trained_model()
        splits, info = self.data()
        space = self.space
        name = self.s.model_name
        final = os.path.join(self.retrain_dir, "final.keras")
        report_path = os.path.join(self.export_dir, "export_report.json")
        if not self.s.overwrite and os.path.exists(report_path):
            done = cli.read_json(report_path)
            if done.get("source") == _model_source(final) and done.get("model_name") == name:
                print(f"export: {self.export_dir} holds a finished export of this model "
                      f"({os.path.basename(report_path)}); --overwrite exports it again",
                      flush=True)
                return done
        os.makedirs(self.export_dir, exist_ok=True)
        _announce(f"export: {name} to {self.export_dir}")
        held_out = data_lib.eval_pipeline(splits.test if splits.test is not None else splits.val,
                                          space.resolution, batch_size=256,
                                          crop_pct=info.eval_crop_pct)
        calibration = data_lib.eval_pipeline(splits.train, space.resolution, batch_size=32,
                                             crop_pct=info.eval_crop_pct).take(8)
        progress = _ExportProgress(self.export_dir, final)
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
        except export_lib.ExportError as e:  # the library's words, with the flag's name
            raise cli.UsageError(str(e).replace("overwrite=True", "--overwrite")) from None
        # batch by batch: memory is bounded by the batch, not by the held-out split
        accuracy = export_lib.compare_accuracy(model, {"tflite_fp32": fp32, "tflite_int8": int8},
                                               held_out)
        report = {"keras": keras_path, "saved_model": serving, "tflite_fp32": fp32,
                  "tflite_int8": int8, "accuracy": accuracy,
                  "held_out_split": "test" if splits.test is not None else "val",
                  "model_name": name, "source": progress.source}
        cli.write_json(report_path, report)
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
                                macs_range=self.s.macs_range, algorithm=self.s.tune_algorithm,
                                seed=self.s.seed)
        except InputError as e:  # bad input found while working; a bug keeps its traceback
            raise cli.UsageError(str(e)) from None
        print(result)
        return result

    def rank(self):
        """--mode=rank: the supernet's ranking of paths against standalone training
        (`cream_tf.ranking`), in <workdir>/rank; resumes an unfinished one."""
        import tensorflow as tf

        from cream_tf import ranking
        from cream_tf.sampler import Sampler

        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise cli.UsageError("--mode=rank runs in one process; use --strategy=default or "
                                 "--strategy=mirrored")
        rank_dir = os.path.join(self.workdir, "rank")
        config = self.s.rank_config()
        remedy = (f"rank in a new --workdir, or delete {rank_dir} to rank again (only "
                  f"--rank_seeds may grow)")
        try:  # another ranking's folder is refused before the supernet is read
            ranking.check_folder(rank_dir, config, settings_lib.rank_flag, remedy)
            result = self.trained_search()
            splits, info = self.data()
            search = self.search_config()
            sampler = Sampler(self.space, search.prior, search.skip_prob, search.macs_range,
                              search.seed)
            _announce(f"rank: {config.paths} sampled paths and the board's, {config.seeds} "
                      f"training(s) of {config.epochs} epochs each")
            payload = ranking.rank(self.space, result, sampler, splits, info, rank_dir, config,
                                   self.strategy, name=settings_lib.rank_flag, remedy=remedy)
        except InputError as e:  # bad input found while working; a bug keeps its traceback
            raise cli.UsageError(str(e)) from None
        print(ranking.to_text(payload), flush=True)
        return payload

    def plots(self, arch):
        """The found network drawn like the paper's figures, and the board over the search."""
        from cream_tf import plots

        history_path = os.path.join(self.search_dir, "board_history.json")
        made = [plots.draw_architecture(arch, self.space,
                                        os.path.join(self.workdir, "architecture.png"))]
        if os.path.exists(history_path):
            low, high = self.s.macs_range
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
        self.source = _model_source(model_path)
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


def _retrain_remedy(message: str, retrain_dir: str) -> str:
    """The retraining's refusal in run.py's terms (run.py has no overwrite for it)."""
    return message.replace("or pass overwrite=True to replace it",
                           f"or delete {retrain_dir} to retrain (--arch or the selection "
                           f"changed since)")


def _model_source(model_path: str) -> dict:
    """Which model file an export came from (path, size, mtime): a retrained model is another."""
    stat = os.stat(model_path)
    return {"model": os.path.abspath(model_path), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


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
            space = settings.make_space(settings.num_classes or 1000)
            arch = arch_lib.parse(settings.arch, space)
        except (ValueError, arch_lib.ArchError) as e:
            raise cli.UsageError(f"--arch: {e}") from None
        model = child.build(arch, space)
        title = arch.to_paper()
    result = flops.profile(model)
    print(f"{title} at {model.input_shape[1]}x{model.input_shape[2]}: {result}")
    print(result.table())
    return result


def run(settings: Settings):
    """Runs `settings.mode` over `settings.workdir`; the settings are already checked."""
    import warnings

    # the LiteRT successor of tf.lite.Interpreter is optional; the old one works in TF 2.21
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    if settings.mode == "profile":
        return profile(settings)
    check_workdir(settings)
    job = Job(settings)
    # before any other TensorFlow op: multi-worker collectives are configured at start-up
    job.strategy  # noqa: B018
    if settings.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    job.data()  # a bad dataset fails here, before anything is written
    if settings.arch:
        job.architecture()
    lock = WorkdirLock(settings.workdir)
    if job.chief:  # the other workers of a multi-worker run share the chief's run
        try:
            lock.acquire()
        except WorkdirBusy as e:
            raise cli.UsageError(str(e)) from None
    try:
        return _run_phases(job)
    finally:
        lock.release()


def _run_phases(job: Job):
    mode = job.s.mode
    if job.chief:  # check_workdir refused another run's identity; this one is kept as it is
        run_identity(job.s).write()
    started = time.time()
    if mode == "tune":
        return job.tune()
    if mode == "rank":
        return job.rank()
    if mode in ("search", "all"):
        job.search()
    if mode in ("select", "all"):
        if mode == "select" or not os.path.exists(job.select_path):
            job.select()
    if mode in ("retrain", "all"):
        if mode == "retrain" or not os.path.exists(os.path.join(job.retrain_dir, "result.json")):
            job.retrain()
        else:
            job.check_retrained()
    report = None
    report_path = os.path.join(job.export_dir, "export_report.json")
    if not job.chief:  # exports, plots and the summary are the chief's alone
        return None
    if mode in ("export", "all"):
        if mode == "export" or not os.path.exists(report_path):
            report = job.export()
        else:
            report = cli.read_json(report_path)
    if mode == "all":
        summarize(job, report, time.time() - started)
    return None


def summarize(job: Job, report, seconds: float):
    from cream_tf import arch as arch_lib
    from cream_tf import flops

    arch = job.architecture()
    space = job.space
    # the space's cost table (cached, and what selection counted with) instead of profiling a
    # newly built child: the same numbers (tests/test_flops.py), without building a network
    path = arch_lib.arch_to_path(arch, space)
    table = flops.cost_table(space)
    macs, params = table.path_macs(path), table.path_params(path)
    retrain = cli.read_json(os.path.join(job.retrain_dir, "result.json"))
    pictures = job.plots(arch)
    summary = {
        "architecture": arch.to_paper(), "blocks": arch.to_blocks(space),
        "macs": macs, "params": params,
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
        f"MACs / params: {macs / 1e6:.2f}M / {params / 1e6:.3f}M",
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
