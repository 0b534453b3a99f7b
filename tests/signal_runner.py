"""Test helper: runs run.py and sends this process a signal after a given step.

    python tests/signal_runner.py STEP SIGNUM search|retrain [run.py flags...]

STEP 0 runs run.py unchanged. For `search` the signal goes out after search step STEP finished
(from the trainer's callback); for `retrain` after the STEP-th training batch of this process.
This makes "kill -9 at step N" reproducible without a hook in the library.
"""
import os
import runpy
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    at_step, signum, phase = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sys.argv = [os.path.join(ROOT, "run.py")] + sys.argv[4:]
    if at_step:
        if phase == "search":
            from cream_tf import search as search_lib  # what the pipeline calls

            original = search_lib.search

            def search(*args, callback=None, **kwargs):
                def hook(step, logs):
                    if callback is not None:
                        callback(step, logs)
                    if step + 1 == at_step:
                        os.kill(os.getpid(), signum)

                return original(*args, callback=hook, **kwargs)

            search_lib.search = search
        else:
            from cream_tf import retrain as retrain_lib

            original = retrain_lib.retrain

            class Kill(keras.callbacks.Callback):
                seen = 0

                def on_train_batch_begin(self, batch, logs=None):
                    Kill.seen += 1
                    if Kill.seen == at_step + 1:  # after batch `at_step` ended
                        os.kill(os.getpid(), signum)

            def retrain(*args, callbacks=(), **kwargs):
                return original(*args, callbacks=[*callbacks, Kill()], **kwargs)

            retrain_lib.retrain = retrain
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
