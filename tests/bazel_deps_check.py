"""Checks BUILD against the imports: every Bazel target depends on what its Python files import.

Under Bazel a target's runfiles hold only the sources of its deps, so a test that imports a
cream_tf module it does not depend on fails there, and a test that depends on more than it imports
reruns for changes it cannot see (issue 16). Outside Bazel nothing notices either mistake; this
script does, without Bazel:

    python tests/bazel_deps_check.py            # exit 1 and one line per mistake
    python tests/bazel_deps_check.py --suggest  # the deps each test target should list

What a file needs: the cream_tf modules it imports (`import cream_tf.x`, `from cream_tf import x`,
`from cream_tf.x import y`, `cream_tf.x` attribute access, `cream_tf.Arch`-style lazy names, import
lines inside string literals run by `python -c`), each with the `__init__.py` of every package on
the way; for a test also what the tests/conftest.py functions it uses import, the repository
files it joins into a path (`os.path.join(ROOT, "tests", "x.py")`: scripts it runs) and the
test modules it imports, with their own needs.
Rules checked:
* every target: the files its sources need are in its sources or (transitively) its deps/data;
  a module under cream_tf/ may assume the `__init__.py` of its own packages (whoever imports it
  from outside needs them), and a library cream_tf/__init__.py (every test gets it from the
  macro in defs.bzl, :run from :cream_tf);
* a cream_py_test target lists exactly the targets of the modules it imports itself (as Bazel's
  own rule: depend on what you import, not on what happens to bring it along), and in its data
  the binaries (:run) whose scripts it runs.
Only the top-level BUILD is read, and only what it writes literally (lists, +, glob): that is
all it uses. Labels of other Bazel packages are not followed.
"""
import ast
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = ("py_library", "py_binary", "py_test", "cream_py_test")


def _value(node):
    """A BUILD expression built from strings, lists, + and glob()."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left) + _value(node.right)
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "glob":
        return sorted(os.path.relpath(p, ROOT) for pattern in _value(node.args[0])
                      for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))
    raise ValueError(f"BUILD line {node.lineno}: cannot read {ast.dump(node)[:60]}")


def _label(label):
    """The target name of a label of this package, or None for another package's label."""
    if label.startswith(":"):
        return label[1:]
    return label[3:] if label.startswith("//:") else None


def macro_deps():
    """The deps defs.bzl's cream_py_test adds to every test (its TEST_DEPS)."""
    with open(os.path.join(ROOT, "defs.bzl")) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TEST_DEPS":
                return _value(node.value)
    return []


def read_build():
    """{name: dict(rule, srcs, deps, data)}: deps and data are this package's target names."""
    targets = {}
    with open(os.path.join(ROOT, "BUILD")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not isinstance(call, ast.Call) or getattr(call.func, "id", "") not in RULES:
            continue
        rule = call.func.id
        attrs = {k.arg: _value(k.value) for k in call.keywords}
        name = attrs["name"]
        srcs, deps, data = attrs.get("srcs", []), attrs.get("deps", []), attrs.get("data", [])
        if rule == "cream_py_test":
            srcs = ["tests/bazel_pytest.py", f"tests/{name}.py"]
            data = data + ["tests/conftest.py"]
        targets[name] = dict(rule=rule, srcs=srcs, own_deps=[_label(d) for d in deps],
                             deps=[_label(d) for d in deps + (macro_deps() if rule ==
                                                               "cream_py_test" else [])],
                             data=[d for d in data if not d.startswith(":")],
                             data_targets=[d[1:] for d in data if d.startswith(":")])
    return targets


def closure(targets, name, _seen=None):
    """The files a target brings into the runfiles: its own, its deps' and its data targets'."""
    seen = set() if _seen is None else _seen
    if name in seen or name not in targets:
        return set()
    seen.add(name)
    t = targets[name]
    files = set(t["srcs"]) | set(t["data"])
    for dep in t["deps"] + t["data_targets"]:
        if dep is not None:
            files |= closure(targets, dep, seen)
    return files


def _module_file(module):
    """cream_tf/x.py or cream_tf/x/__init__.py for module cream_tf.x, or None."""
    path = module.replace(".", "/")
    for candidate in (path + ".py", path + "/__init__.py"):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return candidate
    return None


def _lazy_names():
    """cream_tf/__init__.py's _NAMES: `cream_tf.Arch` imports cream_tf.arch."""
    with open(os.path.join(ROOT, "cream_tf", "__init__.py")) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_NAMES":
                return ast.literal_eval(node.value)
    return {}


LAZY = _lazy_names()


def _files_of(module):
    """The files importing `module` runs: each package __init__.py on the way, then the module."""
    parts, files = module.split("."), []
    for i in range(1, len(parts) + 1):
        path = _module_file(".".join(parts[:i]))
        if path is None:
            break
        files.append(path)
    return files


def _attribute_chain(node):
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id] + names[::-1] if isinstance(node, ast.Name) else []


class Needs(ast.NodeVisitor):
    """Modules imported, names taken from conftest, and repository files joined into paths."""

    def __init__(self):
        self.modules, self.conftest, self.joined, self.names = set(), set(), set(), set()

    def _add(self, module):
        if module == "cream_tf" or module.startswith("cream_tf."):
            self.modules.add(module)

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name)
            if alias.name != "cream_tf":
                self.modules.add(alias.name)  # tests / benchmarks modules too
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        self.modules.add(module)
        for alias in node.names:
            if module == "conftest":
                self.conftest.add(alias.name)
            elif module == "cream_tf" and alias.name in LAZY:
                self.modules.add("cream_tf." + LAZY[alias.name])
            elif _module_file(f"{module}.{alias.name}"):
                self.modules.add(f"{module}.{alias.name}")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        chain = _attribute_chain(node)
        if chain[:1] == ["conftest"] and len(chain) > 1:
            self.conftest.add(chain[1])
        if chain[:1] == ["cream_tf"] and len(chain) > 1:
            if chain[1] in LAZY:
                self.modules.add("cream_tf." + LAZY[chain[1]])
            for i in range(2, len(chain) + 1):
                if _module_file(".".join(chain[:i])):
                    self.modules.add(".".join(chain[:i]))
            return  # the inner Attribute nodes are prefixes of this chain
        self.generic_visit(node)

    def visit_Name(self, node):
        self.names.add(node.id)

    def visit_Call(self, node):
        if _attribute_chain(node.func) == ["os", "path", "join"] and node.args:
            parts = [a.value for a in node.args[1:] if isinstance(a, ast.Constant)]
            if len(parts) == len(node.args) - 1 and parts and str(parts[-1]).endswith(".py"):
                self.joined.add("/".join(parts))
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and "import" in node.value:
            for line in node.value.splitlines():  # code run by `python -c`
                if line.strip().startswith(("import ", "from ")):
                    try:
                        self.visit(ast.parse(line.strip()))
                    except SyntaxError:
                        pass


def needs_of(path):
    """Needs of the file at `path` (relative to ROOT), as a Needs."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    needs = Needs()
    needs.visit(tree)
    return needs


def conftest_needs():
    """{function name: Needs} of tests/conftest.py, and the Needs of its module-level code."""
    with open(os.path.join(ROOT, "tests", "conftest.py")) as f:
        tree = ast.parse(f.read())
    top, functions, values = Needs(), {}, {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = Needs()
            functions[node.name].visit(node)
        else:
            top.visit(node)
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                values[node.targets[0].id] = Needs()
                values[node.targets[0].id].visit(node.value)
    for needs in functions.values():  # a module-level path a function uses: RUN = ...run.py
        for name in needs.names & set(values):
            needs.joined |= values[name].joined
    return top, functions


def _repo_file(module):
    """tests/x.py or benchmarks/x.py for a test-side module (`test_pipeline`, `benchmarks.x`)."""
    for candidate in (module.replace(".", "/") + ".py", "tests/" + module + ".py"):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return candidate
    return None


def needed_files(path, owned, conftest=None, _seen=None):
    """The repository files the file at `path` needs present to run. Files that are sources of a
    target (`owned`) are not followed: that target's own check covers their imports."""
    seen = set() if _seen is None else _seen
    seen.add(path)
    needs = needs_of(path)
    files = set()
    for module in needs.modules:
        if module == "cream_tf" or module.startswith("cream_tf."):
            files.update(_files_of(module))
        elif module != "conftest" and _repo_file(module):  # conftest: by function, below
            files.add(_repo_file(module))
    if conftest is not None:
        for name in needs.conftest & set(conftest[1]):
            for module in conftest[1][name].modules:
                files.update(_files_of(module))
            files.update(f for f in conftest[1][name].joined if os.path.isfile(f"{ROOT}/{f}"))
    if conftest is not None:  # a test runs the scripts it joins into a path; others read files
        files.update(f for f in needs.joined if os.path.isfile(os.path.join(ROOT, f)))
    for f in sorted(files):  # scripts and test modules it runs or imports: their needs too
        if f.endswith(".py") and not f.startswith("cream_tf/") and f not in seen | owned:
            files |= needed_files(f, owned, conftest, seen)
    return files


def _exempt(src, file, test):
    """A module under cream_tf/ may assume the __init__.py of the packages it lies in, and a
    library cream_tf/__init__.py: the macro gives it to every test, :cream_tf to :run."""
    if not file.endswith("__init__.py"):
        return False
    return src.startswith(os.path.dirname(file) + "/") or (
        not test and file == "cream_tf/__init__.py")


def check(targets):
    """(errors, {test target: (the deps it should list, the binaries its data should list)})."""
    owner = {src: name for name, t in targets.items() if t["rule"] not in ("cream_py_test",
                                                                          "py_test")
             for src in t["srcs"]}
    conftest = conftest_needs()
    errors, suggested = [], {}
    for name, t in sorted(targets.items()):
        test = t["rule"] == "cream_py_test"
        # A target's source (run.py of :run) counts only through its target, with its deps.
        have = set(t["srcs"]) | {f for f in t["data"] if f not in owner}
        for dep in t["deps"] + t["data_targets"]:
            have |= closure(targets, dep)
        needed = set()
        sources = [s for s in t["srcs"] + (["tests/conftest.py"] if test else [])
                   if s.endswith(".py") and s != "tests/bazel_pytest.py"]
        for src in sources:
            if src == "tests/conftest.py":  # its functions count where a test uses them
                files = {f for m in conftest[0].modules for f in _files_of(m)}
            else:
                files = needed_files(src, set(owner), conftest if test else None)
            needed |= files
            for f in sorted(files - have):
                if not _exempt(src, f, test):
                    errors.append(f"//:{name}: {src} needs {f}, which no dep of it provides"
                                  + (f" (add :{owner[f]})" if f in owner else ""))
        if test:
            provided = set()
            for d in [_label(d) for d in macro_deps()]:
                provided |= closure(targets, d)
            owners = {owner[f] for f in needed if f in owner and f not in provided}
            minimal = owners  # what it imports itself, even if another dep brings it
            binaries = {o for o in minimal if targets[o]["rule"] == "py_binary"}
            suggested[name] = (sorted(minimal - binaries), sorted(binaries))
            if set(t["own_deps"]) != minimal - binaries:
                errors.append(f"//:{name}: deps should be {_format(minimal - binaries)}, "
                              f"not {_format(t['own_deps'])}")
            if not binaries <= set(t["data_targets"]):
                errors.append(f"//:{name}: data should hold {_format(binaries)} (it runs them)")
    return errors, suggested


def _format(names):
    return "[" + ", ".join(f'":{n}"' for n in sorted(names)) + "]"


def main(argv):
    errors, suggested = check(read_build())
    if "--suggest" in argv:
        for name, (deps, binaries) in suggested.items():
            data = f", data {_format(binaries)}" if binaries else ""
            print(f"{name}: deps {_format(deps)}{data}")
        return 0
    for line in errors:
        print(line)
    print(f"bazel_deps_check: {len(errors)} mistakes in BUILD" if errors else
          "bazel_deps_check: every target depends on what it imports")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
