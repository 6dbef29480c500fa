"""Do two commits print the same plans? For a refactoring that must not change behaviour.

    .venv/bin/python scripts/compare_plans.py OLD_REF [NEW_REF]      # NEW_REF: the working tree

Each ref is checked out in a git worktree of its own (the working tree is used as it is) and runs its own
`meshplan`. The cases are the desired directories both trees have: examples/demo, tests/data/*, and
tests/testdata/*.input. For each case, the live side is the case without its policies (its Mesh, Dataplanes,
ZoneEgress and MeshExternalServices only), rendered by the newer tree and saved as one plain `/config_dump` per
proxy; each tree then plans the whole case against it with `plan --live-from`, as JSON and as text. The JSON
plans are compared without `created_at`; the texts as they are. Prints one line per case; exits 1 if any differs.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA_KINDS = {"Mesh", "Dataplane", "ZoneEgress", "MeshExternalService"}
CLUSTERS_DUMP = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
LISTENERS_DUMP = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
TIMEOUT = 300


def cases(tree: Path) -> dict[str, Path]:
    found = {"examples/demo": tree / "examples" / "demo"}
    found |= {f"tests/data/{p.name}": p for p in sorted((tree / "tests" / "data").glob("*")) if p.is_dir()}
    found |= {f"tests/testdata/{p.name}": p for p in sorted((tree / "tests" / "testdata").glob("*.input"))}
    return {name: path for name, path in found.items() if path.is_dir() and _has_mesh(path)}


def _has_mesh(directory: Path) -> bool:
    """A desired directory holds a Mesh resource (tests/data also holds data that is not a mesh, e.g. kuma-docs)."""
    return any(re.search(r"^(type|kind): Mesh\s*$", p.read_text(errors="replace"), re.MULTILINE)
               for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def meshplan(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "meshplan.cli", *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    imported = subprocess.run([sys.executable, "-c", "import meshplan; print(meshplan.__file__)"], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT).stdout.strip()
    if not imported.startswith(str(tree)):
        sys.exit(f"{tree} runs the meshplan of {imported}, not its own")
    return done


def infra_only(case: Path, out: Path) -> None:
    """The case's directory without the documents that are not infrastructure (`type:` universal, `kind:` Kubernetes)."""
    for path in sorted(case.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        kept = [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)
                and (doc.get("type") or doc.get("kind")) in INFRA_KINDS]
        if kept:
            target = out / path.relative_to(case)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump_all(kept, sort_keys=False))


def live_dumps(tree: Path, case: Path, out: Path) -> None:
    """One plain /config_dump per proxy: what it would run with no policy at all."""
    bare = out / "bare"
    infra_only(case, bare)
    rendered = meshplan(tree, "render", str(bare), "-o", "json")
    if rendered.returncode != 0:
        sys.exit(f"render of {case} without policies failed:\n{rendered.stderr}")
    for proxy, config in json.loads(rendered.stdout).items():
        dump = {"configs": [
            {"@type": CLUSTERS_DUMP, "dynamic_active_clusters": [{"cluster": c} for c in config["clusters"]]},
            {"@type": LISTENERS_DUMP, "dynamic_listeners": [
                {"name": listener["name"], "active_state": {"listener": listener}} for listener in config["listeners"]]},
        ]}
        (out / "dumps").mkdir(exist_ok=True)
        (out / "dumps" / f"{proxy}.json").write_text(json.dumps(dump))


def plans(tree: Path, case: Path, dumps: Path, state: Path) -> tuple[Any, str]:
    as_json = meshplan(tree, "plan", str(case), "--state", str(state), "--live-from", str(dumps), "--json")
    as_text = meshplan(tree, "plan", str(case), "--state", str(state), "--live-from", str(dumps))
    document = json.loads(as_json.stdout) if as_json.stdout.strip() else {"stderr": as_json.stderr}
    if isinstance(document, dict):
        document.pop("created_at", None)
    return document, f"exit {as_text.returncode}\n{as_text.stdout}{as_text.stderr}"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="compare-plans-"))
    trees: list[Path] = []
    try:
        for i, ref in enumerate(argv):
            tree = work / f"tree{i}"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=ROOT, check=True)
            trees.append(tree)
        old, new = trees[0], (trees[1] if len(trees) == 2 else ROOT)
        shared = cases(old).keys() & cases(new).keys()
        differ = 0
        for name in sorted(shared):
            scratch = work / name.replace("/", "_")
            scratch.mkdir()
            live_dumps(new, cases(new)[name], scratch)
            results = []
            for side, tree in (("old", old), ("new", new)):
                state = scratch / f"state-{side}"
                state.mkdir()
                case = scratch / "case"  # one path for both sides: the plans name files and lines
                shutil.rmtree(case, ignore_errors=True)
                shutil.copytree(cases(tree)[name], case)
                results.append(plans(tree, case, scratch / "dumps", state))
            (json_old, text_old), (json_new, text_new) = results
            same = json_old == json_new and text_old == text_new
            differ += not same
            print(f"{'same  ' if same else 'DIFFER'} {name}")
            if not same:
                sys.stdout.writelines(difflib.unified_diff(text_old.splitlines(True), text_new.splitlines(True),
                                                           "old text", "new text", n=1))
                sys.stdout.writelines(list(difflib.unified_diff(
                    json.dumps(json_old, indent=1, sort_keys=True).splitlines(True),
                    json.dumps(json_new, indent=1, sort_keys=True).splitlines(True), "old json", "new json", n=1))[:40])
        print(f"{differ} of {len(shared)} cases differ")
        return 1 if differ else 0
    finally:
        for tree in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
