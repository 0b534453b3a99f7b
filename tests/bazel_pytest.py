"""Entry point of the Bazel py_test targets: runs pytest on the test files given as arguments."""
import os
import sys

import pytest

if __name__ == "__main__":
    # An editable install of cream_tf (`pip install -e`) adds an import hook that finds any
    # cream_tf module missing from the runfiles in that checkout instead, so a test would pass
    # without a dep it needs, on another checkout's code. Under Bazel only the deps count.
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not getattr(f, "__module__", "").startswith("__editable___cream_tf_")]
    here = os.path.dirname(os.path.abspath(__file__))
    # conftest.py and pytest.ini live in the runfiles tree next to the tests.
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow",
                        "--rootdir", os.path.dirname(here)] + sys.argv[1:])
    # 5 = every case of the file is marked slow; those run under plain pytest, not here.
    sys.exit(0 if code == pytest.ExitCode.NO_TESTS_COLLECTED else int(code))
