"""Entry point of the Bazel py_test targets: runs pytest on the test files given as arguments."""
import os
import sys

import pytest

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    # conftest.py and pytest.ini live in the runfiles tree next to the tests.
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow",
                        "--rootdir", os.path.dirname(here)] + sys.argv[1:])
    # 5 = every case of the file is marked slow; those run under plain pytest, not here.
    sys.exit(0 if code == pytest.ExitCode.NO_TESTS_COLLECTED else int(code))
