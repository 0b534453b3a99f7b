"""job: what a workdir may hold, the export's resume record and the chief's role."""
import json
import os
import types

import pytest

import conftest
from cream_tf import cli, job


def test_a_new_or_empty_workdir_is_accepted(tmp_path):
    s = conftest.settings(workdir=str(tmp_path / "new"))
    assert job.check_workdir(s) == str(tmp_path / "new" / job.CONFIG_FILE)
    os.makedirs(tmp_path / "empty")
    assert job.check_workdir(conftest.settings(workdir=str(tmp_path / "empty")))


def test_a_file_or_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(cli.UsageError, match="is a file; give a folder"):
        job.check_workdir(conftest.settings(workdir=str(tmp_path / "f")))
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(cli.UsageError, match="holds no cream_tf run"):
        job.check_workdir(conftest.settings(workdir=str(tmp_path / "other")))


def test_a_run_with_other_search_settings_is_refused_naming_each_difference(tmp_path):
    workdir = str(tmp_path / "w")
    first = conftest.settings(workdir=workdir, lr=0.5)
    cli.write_json(job.check_workdir(first), first.search_identity())
    assert job.check_workdir(conftest.settings(workdir=workdir, lr=0.5))  # the same run
    # settings outside the search (retraining, export) may change on a rerun
    assert job.check_workdir(conftest.settings(workdir=workdir, lr=0.5, retrain_epochs=7,
                                               model_name="other"))
    with pytest.raises(cli.UsageError) as info:
        job.check_workdir(conftest.settings(workdir=workdir, lr=0.25, board_size=3))
    message = str(info.value)
    assert "--lr (0.5 there, 0.25 now)" in message and "--board_size (10 there, 3 now)" in message
    assert os.listdir(workdir) == [job.CONFIG_FILE]


def test_export_progress_keeps_files_of_the_same_model_only(tmp_path):
    model = tmp_path / "final.keras"
    model.write_bytes(b"model")
    export_dir = str(tmp_path / "export")
    os.makedirs(export_dir)
    made = tmp_path / "export" / "m.tflite"

    def export():
        made.write_bytes(b"tflite")
        return str(made)

    progress = job._ExportProgress(export_dir, str(model))
    assert progress.make("tflite_fp32", export) == str(made)
    calls = []
    again = job._ExportProgress(export_dir, str(model))  # a rerun after a crash
    assert again.make("tflite_fp32", lambda: calls.append(1)) == str(made) and not calls
    model.write_bytes(b"retrained model")  # another model: nothing is kept
    fresh = job._ExportProgress(export_dir, str(model))
    assert fresh.done == {}
    fresh.finish()
    assert not os.path.exists(os.path.join(export_dir, ".export_progress.json"))


def _strategy(task_type, task_id, cluster):
    spec = types.SimpleNamespace(as_dict=lambda: cluster)
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: spec)
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("task_type,task_id,cluster,chief", [
    (None, None, {}, True),
    ("chief", 0, {"chief": ["a"], "worker": ["b"]}, True),
    ("worker", 0, {"chief": ["a"], "worker": ["b"]}, False),
    ("worker", 0, {"worker": ["a", "b"]}, True),
    ("worker", 1, {"worker": ["a", "b"]}, False),
])
def test_one_process_of_a_cluster_is_chief(task_type, task_id, cluster, chief):
    assert job._is_chief(_strategy(task_type, task_id, cluster)) is chief
    assert job._is_chief(types.SimpleNamespace()) is True  # no cluster: a single process
