"""The GPU check's two ways of running: with the venv (`gpu_check.sh --cpu-smoke --no-setup`, the whole
script on the CPU, a resume with finetune_tpf included), and offline on a GPU machine with the wheels of
examples/gpu_offline_requirements.txt on top of the machine's own packages (examples/gpu_image_packages.txt):
that list must cover what a real `ns-train`, `ns-eval` and `make_scene` import, and hold nothing they do not
(the list is re-derived here from traced runs); the bundle's compiled wheels must import under numpy 2
(`gpu_bundle.sh --check-numpy2`, with Python 3.12 as on the GPU image when this machine has one); and
`gpu_check.sh --wheels --cpu-smoke` must pass in a venv like the GPU image (numpy 2, torch 2.11).

The last two download from the package index (the bundle, ~25 MiB; the image-like venv, ~2 GB, built
once and kept under ~/.cache/async-nerf-ns/); they are skipped, saying why, only when the index cannot
be reached or the venv cannot be built.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

from conftest import venv_env

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
OWN = "async-nerf-ns"
FIXED_VERSIONS = {"fpsample": "0.3.3"}
"""The list's only pins (the requirement file says why); other names get the venv's version."""
GPU_IMAGE_PYTHON = "3.12"
GPU_IMAGE_TORCH = ("torch==2.11.*", "torchvision==0.26.*", "numpy>=2")
"""The GPU image's Python, torch and numpy (README, examples/gpu_image_packages.txt)."""
NO_INDEX = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
            "Max retries exceeded", "ConnectTimeout", "ReadTimeoutError")


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _listed(path: Path) -> Dict[str, str]:
    """name -> version (or "" for an unpinned name) of a requirement or package list."""
    entries = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            entries[_name(name)] = pinned
    return entries


def test_offline_wheels_are_installed_here_and_not_on_the_gpu_image():
    wheels, image = _listed(EXAMPLES / "gpu_offline_requirements.txt"), _listed(EXAMPLES / "gpu_image_packages.txt")
    assert len(image) > 150 and "torch" in image and "nerfstudio" not in image
    assert not set(wheels) & set(image), "listed for the wheels but already on the image"
    assert {name: pinned for name, pinned in wheels.items() if pinned} == FIXED_VERSIONS
    for name in wheels:
        version(name)  # gpu_bundle.sh takes the venv's version: it must be installed (PackageNotFoundError)


def _traced(command: List[str], output: Path, cwd: Path) -> Set[str]:
    """The distributions `command` (a console script or a .py file) imports, run under trace_imports.py."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "trace_imports.py"), str(output), *command],
        cwd=cwd, env=venv_env(threads=1), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"{command[0]}: {result.stderr[-4000:]}"
    return {_name(d) for d in json.loads(output.read_text())["distributions"]}


@pytest.fixture(scope="module")
def traced_imports(example_scene: Path, tmp_path_factory) -> Dict[str, Set[str]]:
    """What the commands gpu_check.sh runs import: a short ns-train (stage 3 and finetune_tpf on, as in its
    resume check), ns-eval of that run, and make_scene (gpu_check.sh generates the scene when it is absent)."""
    tmp = tmp_path_factory.mktemp("trace")
    train = _traced([
        "ns-train", "async-nerf-small", "--data", str(example_scene), "--output-dir", str(tmp / "runs"),
        "--experiment-name", "trace", "--timestamp", "run", "--max-num-iterations", "8",
        "--vis", "tensorboard", "--steps-per-save", "1000000", "--steps-per-eval-batch", "1000000",
        "--steps-per-eval-image", "1000000", "--steps-per-eval-all-images", "1000000",
        "--pipeline.model.implementation", "torch", "--machine.device-type", "cpu",
        "--pipeline.finetune-tpf", "True", "--pipeline.model.depth-pose-refine-start", "1",
    ], tmp / "train.json", tmp)
    config = tmp / "runs" / "trace" / "async-nerf-small" / "run" / "config.yml"
    evaluate = _traced(["ns-eval", "--load-config", str(config), "--output-path", str(tmp / "eval.json")], tmp / "eval_imports.json", tmp)
    assert "psnr" in json.loads((tmp / "eval.json").read_text())["results"]  # the trace saw a real evaluation
    scene = _traced([
        str(EXAMPLES / "make_scene.py"), str(tmp / "scene"), "--num-rgb", "8", "--width", "32", "--height", "24",
        "--depth-width", "24", "--depth-height", "18",
    ], tmp / "scene.json", tmp)
    assert (tmp / "scene" / "coordinates.pt").is_file()
    return {"ns-train": train, "ns-eval": evaluate, "make_scene": scene}


def test_offline_wheels_cover_exactly_what_ns_train_and_ns_eval_import_beyond_the_gpu_image(traced_imports):
    assert {"nerfstudio", "torch", "tyro", OWN} <= traced_imports["ns-train"]  # the trace saw a real training
    assert {"nerfstudio", "torch", OWN} <= traced_imports["ns-eval"]
    wheels, image = _listed(EXAMPLES / "gpu_offline_requirements.txt"), _listed(EXAMPLES / "gpu_image_packages.txt")
    for command, imported in traced_imports.items():
        missing = imported - set(image) - set(wheels) - {OWN}
        assert not missing, f"imported by {command}, on neither the GPU image nor the offline list: {sorted(missing)}"
    imported = set().union(*traced_imports.values())
    unused = set(wheels) - imported
    assert not unused, f"on the offline list but imported by none of {sorted(traced_imports)}: {sorted(unused)}"


def test_gpu_check_dry_run_lists_the_resume_check_for_each_implementation(tmp_path: Path):
    result = subprocess.run(
        ["bash", str(EXAMPLES / "gpu_check.sh"), "--dry-run", "--no-setup", "--resume-steps", "50",
         "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "check")],
        cwd=REPO, env=venv_env(threads=1), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Echoed commands start with "+ " (ns-train's spans lines: it runs in a Python wrapper given with -c).
    commands = ["+ " + c.replace("\n", " ") for c in re.split(r"^\+ ", result.stdout, flags=re.M)[1:]]
    for impl in ("tcnn", "torch"):  # a dry run shows the GPU path: both implementations
        trains = [c for c in commands if f"--timestamp {impl}-resume " in c]
        assert len(trains) == 2 and all("--pipeline.finetune-tpf True" in c for c in trains), trains
        assert "--max-num-iterations 50" in trains[0] and "--load-dir" not in trains[0]
        assert "--max-num-iterations 100" in trains[1] and f"--load-dir {tmp_path}/check/runs/async-nerf/{impl}-resume/nerfstudio_models" in trains[1]
        assert any(c.startswith("+ ns-eval") and f"{impl}-resume/config.yml" in c for c in commands)
    assert "dry run: nothing was run" in result.stdout


def test_gpu_check_cpu_smoke_trains_evaluates_and_writes_its_table(example_scene: Path, tmp_path: Path):
    # The whole script with the venv and torch fields on the CPU (figures meaningless, the plumbing real):
    # ns-train in the peak-memory wrapper, ns-eval, s/step from the tensorboard events, the table. The resume
    # check's rows (three more processes, ~50 s) are checked once, by the torch 2.11 run below.
    data = tmp_path / "scene"
    shutil.copytree(example_scene, data, ignore=shutil.ignore_patterns(".async_nerf_cache"))
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", str(EXAMPLES / "gpu_check.sh"), "--cpu-smoke", "--no-setup", "--method", "async-nerf-small",
         "--steps", "30", "--resume-steps", "0", "--data", str(data), "--out", str(out)],
        cwd=REPO, env=venv_env(threads=1), capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    (row,) = report["rows"]
    assert row["implementation"] == "torch" and row["status"] == "ok"
    assert not report.get("resume_rows"), report.get("resume_rows")  # --resume-steps 0: none
    # Measured here (one thread, deterministic): 0.14 s/step, val PSNR 16.16 dB, depth RMSE 26.2 m after 30
    # steps shared by 4 cells. This checks the plumbing, not the learning (test_end_to_end does that):
    # 10x margin on time (a loaded CI machine); PSNR above a mid-grey image's 14.0 dB (black: 7.4), depth
    # better than an untrained field's ~60 m.
    assert 0 < row["s_per_step"] < 1.5 and row["train_rays_per_s"] > 0
    assert row["val_psnr"] > 14.0 and 0 < row["depth_rmse_m"] < 40.0
    assert "| torch |" in (out / "gpu_check.md").read_text()


def _assert_resume_row(report: dict, out: Path, resume_steps: int) -> None:
    """The resume check's row: 8 steps with finetune_tpf and stage 3, a checkpoint, --load-dir to 16, ns-eval."""
    (resume,) = report["resume_rows"]
    assert resume["implementation"] == "torch" and resume["check"] == "resume + finetune_tpf"
    assert resume["status"] == "ok", resume
    assert (resume["first_checkpoint_step"], resume["final_checkpoint_step"]) == (resume_steps - 1, 2 * resume_steps - 1)
    # Stage 3 from each cell's 2nd step: in both runs the TPF took optimiser steps, and the resumed run's
    # count continued the first run's (Adam's state was loaded, not restarted).
    assert 0 < resume["tpf_optimizer_steps_first"] < resume["tpf_optimizer_steps_final"]
    assert resume["tpf_max_change"] > 0 and resume["val_psnr"] > 10.0
    table = (out / "gpu_check.md").read_text()
    (line,) = [line for line in table.splitlines() if line.startswith("| torch | resume + finetune_tpf |")]
    assert line.endswith("| ok |"), line


def _python(version_: str) -> Optional[str]:
    """A Python of that version on this machine (on PATH, or pyenv's), or None."""
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() if shutil.which("pyenv") else ""
    candidates = [f"python{version_}", *sorted(glob.glob(f"{root or os.path.expanduser('~/.pyenv')}/versions/{version_}*/bin/python{version_}"))]
    for candidate in candidates:
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True,
        ) if shutil.which(candidate) or Path(candidate).is_file() else None
        if probe is not None and probe.returncode == 0 and probe.stdout.strip() == version_:
            return shutil.which(candidate) or candidate
    return None


def _skip_without_index(output: str, what: str) -> None:
    if any(marker in output for marker in NO_INDEX):
        pytest.skip(f"{what}: the package index cannot be reached from here ({output.strip().splitlines()[-1][:300]})")


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory) -> Dict[str, object]:
    """`gpu_bundle.sh --check-numpy2` once: the wheels for the GPU image's Python 3.12 checked with a
    Python 3.12 of this machine; without one, the cp311 builds of the same versions with this venv's 3.11."""
    out = tmp_path_factory.mktemp("bundle") / "whl"
    python = _python(GPU_IMAGE_PYTHON)
    python_version = GPU_IMAGE_PYTHON if python else "%d.%d" % sys.version_info[:2]
    env = {**venv_env(threads=1), "CHECK_PYTHON": python or sys.executable}
    result = subprocess.run(
        ["bash", str(EXAMPLES / "gpu_bundle.sh"), "--out", str(out), "--python-version", python_version, "--check-numpy2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        _skip_without_index(result.stdout + result.stderr, "gpu_bundle.sh")
    return {"out": out, "python": env["CHECK_PYTHON"], "python_version": python_version, "result": result}


def test_bundle_compiled_wheels_and_fpsample_import_under_numpy_2(gpu_bundle):
    result = gpu_bundle["result"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    wheels = sorted(p.name for p in gpu_bundle["out"].glob("*.whl"))
    compiled = [w for w in wheels if not w[: -len(".whl")].endswith("-none-any")]
    abi = "cp" + gpu_bundle["python_version"].replace(".", "")
    # Measured (Python 3.12.1, numpy 2.5.5): backports-zstd, fpsample 0.3.3, lz4, msgspec, rawpy, websockets.
    assert any(w.startswith("fpsample-0.3.3-") for w in compiled) and all(f"-{abi}-" in w or "-abi3-" in w for w in compiled)
    for wheel in compiled:
        label = "%s %s" % tuple(wheel.split("-")[:2])
        assert f"[gpu_bundle]   {label}: import " in result.stdout and f"{label}: import " in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("[gpu_bundle]   ")]
    assert lines and all(line.endswith(": ok") for line in lines), "\n".join(lines)
    assert "fpsample.bucket_fps_kdline_sampling: 64 distinct indices" in result.stdout  # what nerfstudio calls
    assert re.search(r"numpy 2\.\d+\.\d+, Python " + re.escape(gpu_bundle["python_version"]), result.stdout), result.stdout[-2000:]
    assert "every compiled wheel imports" in result.stdout


def _image_like_venv(python: str, packages: List[str]) -> Path:
    """A venv like the GPU image (its torch, numpy 2 and the image's packages that the check imports), built
    once per Python and package list and kept under ~/.cache/async-nerf-ns/ (XDG_CACHE_HOME); skips the test,
    saying why, when it cannot be built here."""
    requirements = [*GPU_IMAGE_TORCH, *sorted(packages)]
    key = hashlib.sha256(json.dumps([python, requirements]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "async-nerf-ns"
    venv = cache / f"gpu-image-venv-{key}"
    if (venv / "ready").is_file():
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if free < 12 * 2**30:  # measured: 4.7 GB for torch, torchvision, numpy; ~1 GB more for the rest
        pytest.skip(f"the image-like venv needs ~6 GB and {cache} has {free / 2**30:.1f} GiB free")
    building = cache / f".building-{key}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    start = time.monotonic()
    steps = [[python, "-m", "venv", str(building)],
             [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=2400)
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            output = result.stdout + result.stderr
            _skip_without_index(output, "the image-like venv")
            pytest.skip(f"the image-like venv (torch 2.11, numpy 2) cannot be built here: {' '.join(step[:4])} ... "
                        f"exited {result.returncode}: {output.strip().splitlines()[-1][:400] if output.strip() else ''}")
    (building / "ready").write_text(json.dumps({"requirements": requirements, "build_s": round(time.monotonic() - start)}))
    try:
        building.rename(venv)
    except OSError:  # another run built it first
        shutil.rmtree(building, ignore_errors=True)
    return venv


def test_gpu_check_cpu_smoke_under_numpy_2_and_torch_2_11_with_the_offline_wheels(
    gpu_bundle, traced_imports, example_scene: Path, tmp_path: Path
):
    # As on the GPU image: its Python (3.12 when this machine has one), torch 2.11 and numpy 2, the image's
    # packages that the check imports (pip's newest that fit), and the bundle installed by gpu_check.sh
    # --wheels into a folder on PYTHONPATH: the whole script on the CPU.
    if gpu_bundle["result"].returncode != 0:
        pytest.fail("gpu_bundle.sh failed (see test_bundle_compiled_wheels_and_fpsample_import_under_numpy_2)")
    image = _listed(EXAMPLES / "gpu_image_packages.txt")
    imported = set().union(*traced_imports.values())
    heavy = {"torch", "torchvision", "numpy", "triton", "setuptools"}  # torch's own, or pinned above
    packages = sorted(name for name in imported & set(image) - heavy if not name.startswith(("nvidia-", "cuda-")))
    venv = _image_like_venv(gpu_bundle["python"], packages)
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import sys, numpy, torch; print(sys.version.split()[0], numpy.__version__, torch.__version__)"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    versions = probe.stdout.split()
    assert versions[0].startswith(gpu_bundle["python_version"] + ".") and versions[1].startswith("2.") and versions[2].startswith("2.11."), versions
    data = tmp_path / "scene"
    shutil.copytree(example_scene, data, ignore=shutil.ignore_patterns(".async_nerf_cache"))
    out = tmp_path / "check"
    env = {**venv_env(threads=1), "PYTHON": str(python), "ASYNC_NERF_SITE": str(tmp_path / "site")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", str(EXAMPLES / "gpu_check.sh"), "--wheels", str(gpu_bundle["out"]), "--cpu-smoke",
         "--method", "async-nerf-small", "--steps", "12", "--resume-steps", "8", "--data", str(data), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["val_psnr"] > 10.0
    _assert_resume_row(report, out, resume_steps=8)
    assert f"torch {versions[2]}" in (out / "gpu_check.md").read_text()  # the check ran on the image-like torch
