"""settings.Settings: run.py's flags read once, every phase's config built and checked up front."""
import dataclasses
import json

import pytest
from absl import flags

import conftest
from cream_tf import cli, ranking, retrain, run_flags, settings as settings_lib, trainer
from cream_tf.errors import ConfigError
from cream_tf.settings import Settings


def test_settings_has_one_typed_field_per_flag():
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields == set(run_flags.NAMES)
    assert set(settings_lib.SEARCH_KEYS) <= fields


@pytest.mark.parametrize("flag_of,config", [(settings_lib.SEARCH_FLAGS, trainer.SearchConfig),
                                            (settings_lib.RETRAIN_FLAGS, retrain.RetrainConfig),
                                            (settings_lib.RANK_FLAGS, ranking.RankConfig)],
                         ids=["search", "retrain", "rank"])
def test_config_fields_map_to_real_flags(flag_of, config):
    fields = {f.name for f in dataclasses.fields(config)}
    assert set(flag_of) <= fields, set(flag_of) - fields
    assert set(flag_of.values()) <= set(run_flags.NAMES)


def test_search_config_is_built_from_the_flags():
    s = conftest.settings(lr=0.5, batch_size=64, flops_min=0.0, flops_max=3.5,
                          checkpoint_every=7, mixed_precision="none", search_epochs=4,
                          warmup_epochs=1)
    config = s.search_config(train_examples=1000)
    assert config.learning_rate == pytest.approx(0.5 * 64 / 1024)  # per 1024 images
    assert config.steps_per_epoch == 1000 // 64
    assert config.macs_range == (None, 3_500_000)  # 0 means no bound
    assert config.checkpoint_interval == 7 and config.mixed_precision is None
    assert conftest.settings(steps_per_epoch=5).search_config(1000).steps_per_epoch == 5


def test_no_budget_is_no_macs_range():
    s = conftest.settings()
    assert s.macs_range == (None, None)
    assert s.search_config().macs_range is None


def test_retrain_config_keeps_the_rate_per_1024_images():
    config = conftest.settings(retrain_lr=0.128, retrain_batch_size=256,
                               retrain_epochs=10).retrain_config()
    assert config.lr == 0.128 and config.scaled_lr == pytest.approx(0.032)


# Every bad value or combination is refused by Settings.from_flags, before any work, with a
# line that names the flag (not the config field behind it) and what would be valid.
BAD = [
    (dict(lr=0.0), "--lr must be > 0, got 0.0"),
    (dict(meta_lr=-1.0), "--meta_lr must be > 0"),
    (dict(search_epochs=0), "--search_epochs must be an int >= 1"),
    (dict(retrain_epochs=0), "--retrain_epochs must be an int >= 1"),
    (dict(search_epochs=3, warmup_epochs=5), "--warmup_epochs must be in [0, --search_epochs=3]"),
    (dict(retrain_epochs=2), "--retrain_warmup_epochs must be in [0, --retrain_epochs=2)"),
    (dict(checkpoint_every=0), "--checkpoint_every must be an int >= 1"),
    (dict(weight_decay=-0.1), "--weight_decay must be >= 0"),
    (dict(board_gap=-1.0), "--board_gap must be >= 0"),
    (dict(retrain_dropout=1.0), "--retrain_dropout must be in [0, 1)"),
    (dict(ema_decay=1.0), "--ema_decay must be in [0, 1)"),
    (dict(val_fraction=0.0), "--val_fraction must be in (0, 0.5)"),
    (dict(val_fraction=0.5), "--val_fraction must be in (0, 0.5)"),
    (dict(num_classes=1), "--num_classes must be 0 (the dataset's) or at least 2"),
    (dict(steps_per_epoch=-1), "--steps_per_epoch must be >= 0"),
    (dict(flops_min=-1.0), "--flops_min must be >= 0"),
    (dict(flops_min=5.0, flops_max=2.0), "--flops_min/--flops_max (5.0M, 2.0M)"),
    (dict(select_bn_batches=0), "--select_bn_batches must be > 0"),
    (dict(tune_trials=0), "--tune_trials must be > 0"),
    (dict(rank_paths=1), "--rank_paths must be an int >= 2, got 1"),
    (dict(rank_epochs=0), "--rank_epochs must be an int >= 1, got 0"),
    (dict(rank_seeds=0), "--rank_seeds must be an int >= 1, got 0"),
    (dict(resolution=16), "--resolution must be an int >= 32"),
    (dict(width=0.0), "--width must be a number in (0, 4]"),
    (dict(depth=["7"]), "--depth must be one int or 5 ints, each from 1 to 6"),
    (dict(depth=["2", "2"]), "got '2,2'"),
    (dict(depth=["two"]), "--depth takes one int or five"),
]


@pytest.mark.parametrize("flag_values,needle", BAD, ids=[str(v) for v, _ in BAD])
def test_bad_flags_fail_before_any_work_naming_the_flag(flag_values, needle, tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(cli.UsageError) as info:
        conftest.settings(workdir=str(workdir), **flag_values)
    assert needle in str(info.value), str(info.value)
    assert "SearchConfig" not in str(info.value) and "RetrainConfig" not in str(info.value)
    assert "\n" not in str(info.value)
    assert not workdir.exists()


def test_a_bad_value_the_flags_cannot_set_is_a_bug_not_a_usage_error():
    """A config field no flag sets keeps its ConfigError (and traceback): only input a user
    typed becomes a usage error."""
    with pytest.raises(ConfigError, match="SearchConfig.meta_slice"):
        with settings_lib._as_flags(conftest.settings(), settings_lib.SEARCH_FLAGS):
            trainer.SearchConfig(meta_slice=0)


def test_profile_mode_needs_no_valid_space():
    """A zoo name brings its own space: --mode=profile checks the rest only."""
    s = conftest.settings(mode="profile", resolution=16, arch="cream_14")
    assert s.mode == "profile"


def test_search_identity_is_json_and_names_the_search_keys():
    s = conftest.settings(depth=["1", "2", "1", "2", "1"])
    identity = s.search_identity()
    assert list(identity) == list(settings_lib.SEARCH_KEYS)
    assert identity["depth"] == [1, 2, 1, 2, 1]
    assert json.loads(json.dumps(identity)) == identity


def test_settings_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        conftest.settings().lr = 2.0


def test_flags_files_set_the_same_settings_as_the_command_line(tmp_path):
    path = tmp_path / "my.flags"
    path.write_text("--lr=0.25\n--board_size=3\n")
    argv = ["run.py"] + cli.expand_flags_file([f"--flags={path}", "--board_size=4"])
    saved = flags.FLAGS.flag_values_dict()
    try:
        flags.FLAGS(argv)
        s = conftest.settings()
    finally:
        for name in run_flags.NAMES:
            flags.FLAGS[name].value = saved[name]
            flags.FLAGS[name].present = 0
    assert s.lr == 0.25 and s.board_size == 4  # a later flag overrides the file
