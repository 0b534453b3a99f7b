"""Macros for cream_tf's Bazel targets."""

# What every test gets besides its own deps: cream_tf/__init__.py, which resolves the submodules
# lazily, so a test that depends on :arch alone still imports the real package (not an empty
# __init__.py that Bazel would create). tests/bazel_deps_check.py reads this list.
TEST_DEPS = ["//:cream_tf_init"]

def cream_py_test(name, deps = [], data = [], size = "enormous", **kwargs):
    """A py_test that runs tests/<name>.py through pytest (with conftest.py and pytest.ini).

    deps: the py_library targets of the cream_tf modules tests/<name>.py imports, directly or
    through the tests/conftest.py helpers it uses (tests/bazel_deps_check.py checks them).
    """
    native.py_test(
        name = name,
        srcs = ["tests/bazel_pytest.py", "tests/%s.py" % name],
        main = "tests/bazel_pytest.py",
        args = ["$(location tests/%s.py)" % name],
        data = data + ["tests/conftest.py", "pytest.ini"],
        deps = deps + TEST_DEPS,
        size = size,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
