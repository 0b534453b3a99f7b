"""The flags of run.py, defined once: `settings.Settings.from_flags` is their one reader.

Importing this module defines the flags and imports nothing but absl, so run.py can parse and
reject a command line before TensorFlow starts. Tests set them with absl's `flagsaver`.
"""
from absl import flags

MODES = ("all", "search", "select", "retrain", "export", "profile", "tune", "rank")

_MODE = flags.DEFINE_enum("mode", "all", MODES, "Phase to run; 'all' runs search, select, retrain "
                          "and export in turn; 'rank' checks a finished search's ranking of paths "
                          "against standalone training.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Folder for everything this run makes.")
_DATASET = flags.DEFINE_string("dataset", "digits", "tfds:NAME, folder:PATH, digits or "
                               "synthetic[:CLASSES].")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Part of train held out when the dataset "
                                   "has no validation split.")
_SPACE = flags.DEFINE_enum("space", "mbconv", ["mbconv", "mbconv_res", "mbconv_res_conv"],
                           "Search space: the paper's Table 1, 2 or 3.")
_LAYOUT = flags.DEFINE_enum("layout", "released", ["released", "paper"], "Stage strides.")
_DEPTH = flags.DEFINE_list("depth", ["4"], "Largest blocks per stage: one int or five.")
_RESOLUTION = flags.DEFINE_integer("resolution", 224, "Input height and width.")
_WIDTH = flags.DEFINE_float("width", 1.0, "Channel multiplier.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 0, "Classes; 0 takes the dataset's.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of paths, data order and initialisation.")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "tpu",
                                                   "default"], "tf.distribute strategy.")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False, "Enable TF op determinism (slower).")
# search
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size of the search.")
_SEARCH_EPOCHS = flags.DEFINE_integer("search_epochs", 120, "Search epochs.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0 = one pass "
                                        "over the training split.")
_LR = flags.DEFINE_float("lr", 1.0, "Search learning rate per 1024 images, scaled linearly by "
                         "--batch_size (linear decay to 0).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 1e-4, "L2 on conv and dense kernels.")
_WARMUP_EPOCHS = flags.DEFINE_integer("warmup_epochs", 20, "Epochs before distillation starts.")
_BOARD_SIZE = flags.DEFINE_integer("board_size", 10, "Paths kept on the prioritized board.")
_BOARD_IMAGES = flags.DEFINE_integer("board_images", 4, "Images stored per board entry.")
_BOARD_GAP = flags.DEFINE_float("board_gap", 5.0, "Accuracy points a path must beat the worst "
                                "entry by (or beat it with fewer MACs).")
_TEACHER = flags.DEFINE_enum("teacher", "meta", ["meta", "top1"], "Teacher selection.")
_SCORING_GRADIENT = flags.DEFINE_bool(
    "scoring_gradient", True, "Differentiate the student's board scoring through rho, as the "
    "release does; false saves its backward (docs/method.md, 'On purpose').")
_META_INTERVAL = flags.DEFINE_integer("meta_interval", 200, "Steps between meta-gradient updates.")
_META_LR = flags.DEFINE_float("meta_lr", 1e-4, "Learning rate of the matching network.")
_FLOPS_MIN = flags.DEFINE_float("flops_min", 0.0, "Smallest MACs of a sampled path, millions.")
_FLOPS_MAX = flags.DEFINE_float("flops_max", 0.0, "Largest MACs of a sampled path, millions "
                                "(0 = no limit).")
_PRIOR = flags.DEFINE_enum("prior", "uniform", ["uniform", "release"], "Op sampling prior.")
_MIXED_PRECISION = flags.DEFINE_enum("mixed_precision", "none",
                                     ["none", "mixed_bfloat16", "mixed_float16"],
                                     "Keras dtype policy of the search.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "XLA for single-device GPU/TPU runs.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 100, "Search steps between "
                                         "checkpoints.")
_MAX_BAD_STEPS = flags.DEFINE_integer("max_bad_steps", 20, "Stop the search after this many "
                                      "steps in a row with a non-finite loss or gradient (each "
                                      "is skipped).")
# select
_USE_UNFINISHED_SEARCH = flags.DEFINE_bool("use_unfinished_search", False, "Select from the "
                                           "search's newest checkpoint even if it has steps left "
                                           "(by default selection needs a finished search).")
_SELECT_BN_BATCHES = flags.DEFINE_integer("select_bn_batches", 20, "Training batches that "
                                          "re-estimate BN statistics per board path.")
# retrain
_ARCH = flags.DEFINE_string("arch", None, "Architecture for retrain/export/profile instead of the "
                            "selected one: a zoo name or any architecture string.")
_RETRAIN_EPOCHS = flags.DEFINE_integer("retrain_epochs", 500, "Retraining epochs.")
_RETRAIN_BATCH_SIZE = flags.DEFINE_integer("retrain_batch_size", 128, "Retraining batch size.")
_RETRAIN_LR = flags.DEFINE_float("retrain_lr", 0.064, "Retraining learning rate per 1024 images, "
                                 "scaled linearly by --retrain_batch_size.")
_RETRAIN_WARMUP_EPOCHS = flags.DEFINE_float("retrain_warmup_epochs", 3.0, "Epochs of linear "
                                             "learning-rate warm-up before the cosine decay; "
                                             "below --retrain_epochs.")
_RETRAIN_DROPOUT = flags.DEFINE_float("retrain_dropout", 0.2, "Dropout before the classifier.")
_EMA_DECAY = flags.DEFINE_float("ema_decay", 0.9999, "Weight EMA of the retrained network "
                                "(0 = off).")
# export
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Export base folder; default "
                                  "<workdir>/export.")
_MODEL_NAME = flags.DEFINE_string("model_name", "cream", "Model name of the exports.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing export files.")
# tune
_TUNE_TRIALS = flags.DEFINE_integer("tune_trials", 10, "keras-tuner trials (--mode=tune).")
_TUNE_EPOCHS = flags.DEFINE_integer("tune_epochs", 2, "Training epochs per keras-tuner trial.")
_TUNE_ALGORITHM = flags.DEFINE_enum("tune_algorithm", "random", ["random", "bayesian"],
                                    "keras-tuner oracle.")
# rank
_RANK_PATHS = flags.DEFINE_integer("rank_paths", 20, "Paths --mode=rank draws from the search's "
                                   "sampler (at least 2); the board's paths come on top.")
_RANK_EPOCHS = flags.DEFINE_integer("rank_epochs", 8, "Standalone training epochs per path and "
                                    "seed of --mode=rank (the retraining recipe, its warm-up "
                                    "scaled to these epochs).")
_RANK_SEEDS = flags.DEFINE_integer("rank_seeds", 1, "Standalone trainings per path of "
                                   "--mode=rank, seeds --seed, --seed+1, ...; a finished ranking "
                                   "can be extended with more.")

HOLDERS = {holder.name: holder for holder in list(globals().values())
           if isinstance(holder, flags.FlagHolder)}
NAMES = sorted(HOLDERS)
