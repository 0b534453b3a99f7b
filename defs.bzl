"""Macros for cream_tf's Bazel targets."""

def cream_py_test(name, deps = [], data = [], size = "enormous", **kwargs):
    """A py_test that runs tests/<name>.py through pytest (with conftest.py and pytest.ini)."""
    native.py_test(
        name = name,
        srcs = ["tests/bazel_pytest.py", "tests/%s.py" % name],
        main = "tests/bazel_pytest.py",
        args = ["$(location tests/%s.py)" % name],
        data = data + ["tests/conftest.py", "pytest.ini"],
        deps = deps + ["//:cream_tf"],
        size = size,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
