"""Module revisits along catpot's two main paths, for this checkout and another one side by side.

A *visit* of a module is a distinct way into it along the path: a pair (calling function in another file, called
function of the module), the caller being another catpot module or a library calling back (TRL calling a trainer
hook). A call repeated in a loop is one visit; code that runs while a module is imported is not counted, nor are
calls within a file. A module's *revisits* are its visits after the first: how often a reader following the path
comes back to that file. Counting the returns as well (a distinct call out of a module returns to it once) gives
the *revisits with returns*: visits plus returns, less one, per module. Counted with ``sys.setprofile`` from
``recipes.cli.main`` until the first call of the path's target, which ends the run:

- ``train``: ``catpot train demo`` (the shipped demo recipe, into a temporary directory) until the first CAT
  weight, i.e. the first call of a ``*_weight`` function of ``cat/objectives.py``;
- ``eval``: ``catpot eval`` of the embedded model on 2 arithmetic problems, n = 4, ``--strategies maj``, until the
  first call of ``majority_curve`` in ``cat/estimators.py`` (the maj@k numbers).

Each path of each checkout runs in its own process, one after the other. Usage:

    git worktree add /tmp/before REV      # REV: the revision to compare with
    python benchmarks/module_revisits.py --before /tmp/before [--paths train,eval]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

PACKAGES = ("cat", "core", "evaluation", "pot", "recipes", "trainers")
TARGETS = {"train": ("cat/objectives.py", lambda name: name.endswith("_weight")),
           "eval": ("cat/estimators.py", lambda name: name == "majority_curve")}


class _Reached(BaseException):
    """Raised at the target: a BaseException, so that no ``except Exception`` on the way catches it."""


def _argv(path: str, out: Path) -> list[str]:
    if path == "train":
        return ["train", "demo", "--set", f"output_dir={out}", "--set", "logging.mode=disabled"]
    return ["eval", "--model", "smollm2-135m-instruct", "--task", "arithmetic", "--limit", "2", "--n", "4",
            "--ks", "1,2,4", "--strategies", "maj", "--max-new-tokens", "16", "--out", str(out)]


def count(root: Path, path: str) -> dict:
    """Entries into each catpot module (``package/file.py``) from ``catpot <path>``'s start to its target."""
    root = str(root.resolve()) + os.sep
    target_file, target_name = TARGETS[path]
    labels: dict[str, str | None] = {}

    def label(filename: str) -> str | None:
        if filename not in labels:
            relative = filename[len(root):] if filename.startswith(root) else None
            labels[filename] = relative if relative and relative.split(os.sep)[0] in PACKAGES else None
        return labels[filename]

    entries: dict[str, set] = {}
    calls: Counter[str] = Counter()
    importing = 0

    def profile(frame, event, _arg):
        nonlocal importing
        code = frame.f_code
        if code.co_name == "<module>":  # module bodies run at import: not part of the path a reader follows
            importing += 1 if event == "call" else -1 if event == "return" else 0
            return
        if event != "call" or importing:
            return
        callee = label(code.co_filename)
        if callee is None:
            return
        caller = frame.f_back
        while caller is not None and caller.f_code.co_filename.startswith("<"):  # generated code is transparent
            caller = caller.f_back
        if caller is None or caller.f_code.co_filename == code.co_filename:
            return
        source = label(caller.f_code.co_filename) or "a library"
        entries.setdefault(callee, set()).add(f"{source}:{caller.f_code.co_qualname} → {code.co_qualname}")
        calls[callee] += 1
        if callee == target_file and target_name(code.co_name):
            raise _Reached

    from recipes.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        sys.setprofile(profile)
        try:
            main(_argv(path, Path(tmp) / "out"))
        except _Reached:
            reached = True
        else:
            reached = False
        finally:
            sys.setprofile(None)
    return {"reached": reached, "calls": dict(calls), "entries": {m: sorted(e) for m, e in entries.items()}}


def _run(root: Path, path: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, str(Path(__file__).resolve()), "--count", path]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{root} {path}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def report(path: str, before: dict, after: dict) -> None:
    def visits(result: dict, module: str) -> int:
        return len(result["entries"].get(module, ()))

    print(f"\n## {path}: reached the target: before {before['reached']}, after {after['reached']}")
    print(f"{'module':32s} {'visits before':>13s} {'after':>6s} {'revisits before':>15s} {'after':>6s} "
          f"{'calls before':>12s} {'after':>6s}")
    modules = sorted(set(before["entries"]) | set(after["entries"]),
                     key=lambda m: (-max(visits(before, m), visits(after, m)), m))
    for m in modules:
        b, a = visits(before, m), visits(after, m)
        print(f"{m:32s} {b:13d} {a:6d} {max(b - 1, 0):15d} {max(a - 1, 0):6d} "
              f"{before['calls'].get(m, 0):12d} {after['calls'].get(m, 0):6d}")
    totals = {}
    for name, result in (("before", before), ("after", after)):
        modules_seen = len(result["entries"])
        total = sum(len(e) for e in result["entries"].values())
        totals[name] = total - modules_seen
        returns = Counter(entry.split(":", 1)[0] for entries in result["entries"].values() for entry in entries)
        both = {m: len(result["entries"].get(m, ())) + returns.get(m, 0) for m in set(result["entries"]) | set(returns)
                if m != "a library"}
        again = sum(len(e) > 1 for e in result["entries"].values())
        print(f"{name}: {modules_seen} modules, {total} visits, {total - modules_seen} revisits in {again} modules; "
              f"with returns {sum(v - 1 for v in both.values())} revisits in {sum(v > 1 for v in both.values())} "
              "modules")
    if totals["before"]:
        print(f"revisits after / before: {totals['after'] / totals['before']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout to count side by side (e.g. a git worktree)")
    parser.add_argument("--paths", default="train,eval")
    parser.add_argument("--show", action="store_true", help="list every entry (caller → callee) per module")
    parser.add_argument("--count", choices=sorted(TARGETS), help=argparse.SUPPRESS)  # one path, in this process
    args = parser.parse_args()
    if args.count:
        print(json.dumps(count(Path.cwd(), args.count)))
        return
    here = Path(__file__).resolve().parents[1]
    for path in args.paths.split(","):
        after = _run(here, path)
        before = _run(args.before, path) if args.before else {"reached": None, "calls": {}, "entries": {}}
        report(path, before, after)
        if args.show:
            for name, result in (("before", before), ("after", after)):
                for module, entries in sorted(result["entries"].items()):
                    print(f"{name} {module}: " + "; ".join(entries))


if __name__ == "__main__":
    main()
