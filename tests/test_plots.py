"""Figures (cream_tf.plots): written atomically, readable, optional matplotlib."""
import os
import sys

import numpy as np
import pytest

from cream_tf import plots, zoo
from cream_tf.space import Space

SPACE = Space("mbconv_res_conv", depth=2, resolution=32, width=0.5, num_classes=10)


def read_png(path):
    image = pytest.importorskip("matplotlib.image").imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    return image


def no_temp_files(directory):
    return not [f for f in os.listdir(directory) if f.startswith(".")]


@pytest.mark.parametrize("architecture", [
    "[[0, 6], [7, 8], [9, 10], [3, 10], [5, 1]]",             # MBConv, Res, Conv, Skip
    "DS | MB4 3x3 | Res 3x3, Conv 1x1 | Conv 5x5 | MB6 7x7 | MB6 3x3, MB4 5x5",
])
def test_draw_architecture(tmp_path, architecture):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "arch.png")
    assert plots.draw_architecture(architecture, SPACE, path) == path
    image = read_png(path)
    assert image[..., :3].std() > 0.05  # something was drawn
    assert no_temp_files(tmp_path)


def test_draw_zoo_model_overwrites_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    entry = zoo.get("cream_604")
    path = str(tmp_path / "sub" / "cream_604.png")
    plots.draw_architecture(entry.arch(), entry.space(), path)
    first = os.path.getsize(path)
    plots.draw_architecture(entry.arch(), entry.space(), path, title="again")
    assert os.path.getsize(path) > 0 and first > 0
    assert sorted(os.listdir(tmp_path / "sub")) == ["cream_604.png"]


def test_draw_architecture_rejects_bad_architecture(tmp_path):
    with pytest.raises(ValueError, match="bad token"):
        plots.draw_architecture("DS | MB9 3x3 | MB4 3x3 | MB4 3x3 | MB4 3x3 | MB4 3x3", SPACE,
                                str(tmp_path / "x.png"))


def board_history(steps=5, size=4):
    rng = np.random.default_rng(0)
    return [{"step": 100 * s,
             "entries": [{"accuracy": 20 + 10 * s + rng.normal(), "macs": rng.uniform(5e6, 9e6)}
                         for _ in range(size)]} for s in range(steps)]


def test_board_points_accepts_several_forms():
    class Entry:
        score, flops = 55.0, 7_000_000

    points = plots.board_points([(0, [Entry()]), {"step": 5, "board": [{"top1": 0.6,
                                                                         "macs_m": 7.5}]}])
    assert points == [(0, [(7.0, 55.0)]), (5, [(7.5, 0.6)])]
    with pytest.raises(ValueError, match="accuracy, score, top1"):
        plots.board_points([(0, [{"macs": 1}])])


def test_plot_board(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "board.png")
    assert plots.plot_board(board_history(), path, flops_range=(6, 8)) == path
    read_png(path)
    assert no_temp_files(tmp_path)


def test_plot_board_empty_history_draws_nothing(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert plots.plot_board([], str(tmp_path / "b.png")) is None
    assert "empty" in capsys.readouterr().err and not os.listdir(tmp_path)


def rank_report(measured=True):
    """A ranking's rank.json of three paths, one on the board, with two seeds each."""
    rows = [{"supernet_score": 40.0 + i, "mean": 90.0 + 2 * i, "std": 0.5 if measured else None,
             "on_board": i == 2} for i in range(3)]
    if not measured:
        rows[0]["mean"] = None
        for row in rows[1:]:
            row["supernet_score"] = None
    stats = {"kendall_tau": {"value": 1.0, "low": 1.0, "high": 1.0},
             "spearman_rho": {"value": 1.0, "low": None, "high": None},
             "top_k": {"k": 3, "overlap": 3}}
    return {"paths": rows, "seeds": [0, 1], "held_out": "test",
            "statistics": stats if measured else None}


def test_plot_rank(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "rank.png")
    assert plots.plot_rank(rank_report(), path) == path
    read_png(path)
    assert no_temp_files(tmp_path)


def test_plot_rank_without_a_measured_path_draws_nothing(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert plots.plot_rank(rank_report(measured=False), str(tmp_path / "r.png")) is None
    assert "no path is measured yet" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_without_matplotlib_a_message_and_no_crash(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert not plots.have_matplotlib()
    assert plots.draw_architecture("[[0, 7], [7, 8], [9, 10], [3, 10], [5, 1]]", SPACE,
                                   str(tmp_path / "a.png")) is None
    assert plots.plot_board(board_history(), str(tmp_path / "b.png")) is None
    assert plots.plot_rank(rank_report(), str(tmp_path / "r.png")) is None
    err = capsys.readouterr().err
    assert err.count("matplotlib is not installed") == 3 and "cream_tf[plots]" in err
    assert not os.listdir(tmp_path)
