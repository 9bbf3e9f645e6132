"""Which installed distributions a command imports: runs a console script (or a Python file) in this
process and, when it exits, writes the distributions of every top-level module in ``sys.modules``.

    python examples/trace_imports.py OUT.json ns-train async-nerf-small --data D --max-num-iterations 2 ...
    python examples/trace_imports.py OUT2.json ns-eval --load-config RUN/config.yml --output-path eval.json
    python examples/trace_imports.py OUT3.json examples/make_scene.py OUT_SCENE --num-rgb 8

OUT.json: ``{"distributions": {name: version}, "modules": {name: [top-level modules]}}``, written when the
command exits (also when it fails). This is how examples/gpu_offline_requirements.txt was derived (the
union of the imports of the commands gpu_check.sh runs: ns-train, with the resume check's finetune_tpf
and stage 3, ns-eval of its run, and make_scene; minus the packages of the GPU image);
tests/test_gpu_bundle.py re-derives it on every run of the suite.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
from importlib.metadata import entry_points, packages_distributions, version
from pathlib import Path
from typing import Dict, List


def imported_distributions() -> Dict[str, List[str]]:
    """Distribution name -> the top-level modules of it that are imported now (standard library: none)."""
    owners = packages_distributions()
    found: Dict[str, List[str]] = {}
    for module in sorted({name.split(".")[0] for name in list(sys.modules)}):
        for distribution in owners.get(module, []):
            found.setdefault(distribution, []).append(module)
    return found


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    output, target, arguments = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def write() -> None:
        modules = imported_distributions()
        distributions = {name: version(name) for name in sorted(modules)}
        output.write_text(json.dumps({"distributions": distributions, "modules": modules}, indent=1))

    atexit.register(write)
    if target.endswith(".py"):
        sys.argv = [target, *arguments]
        runpy.run_path(target, run_name="__main__")
        return
    scripts = [e for e in entry_points(group="console_scripts") if e.name == target]
    if not scripts:
        raise SystemExit(f"trace_imports: no console script named {target!r} in this environment")
    sys.argv = [target, *arguments]
    scripts[0].load()()


if __name__ == "__main__":
    main()
