"""Runs chosen tests N times, each time in a fresh Python process, and checks they give the same
verdict and the same recorded numbers every time.

    python tests/repeat.py tests/test_export.py::test_int8_agrees_with_keras_on_held_out_digits
    python tests/repeat.py --times 5 -m slow tests/test_trainer.py::test_resume_continues_exactly

A fresh process per run is the point: module fixtures (a trained model, a traced step) are made
anew each time, as on a new CI machine. Numbers a test records with pytest's `record_property`
are compared across runs; any difference is reported, since the suite runs under op determinism
and a test's numbers must not depend on the run. Exit code 0 only if every run passed and every
recorded number repeated exactly.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(node_ids, marker, junit_path):
    """One pytest process over `node_ids`; {test id: (outcome, {property: value})}."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
               f"--junitxml={junit_path}", "-m", marker] + node_ids
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.path.exists(junit_path):
        raise SystemExit(f"repeat.py: error: pytest wrote no report for {' '.join(node_ids)}")
    results = {}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        results[name] = (outcome, props)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("node_ids", nargs="+", help="pytest node ids or files")
    parser.add_argument("--times", type=int, default=5, help="runs (default 5)")
    parser.add_argument("-m", dest="marker", default="slow or not slow",
                        help="pytest -m expression (default: every test, slow ones included)")
    args = parser.parse_args()
    if args.times < 2:
        parser.error("--times must be at least 2 to compare runs")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.times):
            results = run_once(args.node_ids, args.marker, os.path.join(tmp, f"run{i}.xml"))
            if not results:
                raise SystemExit("repeat.py: error: no test matched "
                                 f"{' '.join(args.node_ids)} with -m '{args.marker}'")
            runs.append(results)
            print(f"run {i + 1}/{args.times}: " + ", ".join(
                f"{name.rsplit('::', 1)[-1]} {outcome}" for name, (outcome, _) in results.items()),
                flush=True)
    passed = failed = 0
    unstable = []
    for name in runs[0]:
        outcomes = [r.get(name, ("missing", {}))[0] for r in runs]
        props = [r.get(name, ("missing", {}))[1] for r in runs]
        ok = all(o == "passed" for o in outcomes)
        if any(p != props[0] for p in props):
            unstable.append(name)
            ok = False
        passed, failed = passed + ok, failed + (not ok)
        print(f"{name}: {' '.join(outcomes)}")
        for key in sorted(props[0]):
            values = [p.get(key) for p in props]
            same = "same in every run" if len(set(values)) == 1 else "DIFFERS"
            print(f"    {key} = {values[0]} ({same})" if same != "DIFFERS"
                  else f"    {key}: {values} (DIFFERS)")
    if unstable:
        print("recorded numbers differ between runs: " + ", ".join(unstable))
    print(f"{passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
