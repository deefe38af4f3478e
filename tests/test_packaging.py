"""setup.py ships every module: a directory of nemo_mft without __init__.py would be left out of a wheel
(the editable install the tests use would not notice). A wheel also carries the recipes of conf/ (as
nemo_mft.conf), and an install of the wheel alone finds them."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_directory_is_a_package():
    packages = set(find_packages(where=str(ROOT), include=["nemo_mft", "nemo_mft.*"]))
    source_dirs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nemo_mft").rglob("*.py")}
    assert source_dirs <= packages, f"not packaged: {sorted(source_dirs - packages)}"


def _run(args, **kwargs):
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_an_installed_wheel_finds_its_recipes(tmp_path):
    # The wheel is built from a copy of what setup.py reads: built in the checkout, it would leave build/
    # and nemo_mft.egg-info there, and build/lib/ can carry files since deleted into later wheels.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "nemo_mft", source / "nemo_mft", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", source / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    # Offline and without the checkout on the path; PIP_* settings of the caller's shell do not apply.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NEMO_MFT_CONFIG_DIR") and not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"),
          str(source)], env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("nemo_mft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (ROOT / "conf").glob("*.yaml"))
    assert "mft_tiny.yaml" in recipes
    missing = [f"nemo_mft/conf/{name}" for name in recipes if f"nemo_mft/conf/{name}" not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert not any(n.startswith("conf/") for n in names), "conf/ must ship as nemo_mft/conf/, not top-level"

    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], env=env, cwd=tmp_path)
    # The venv also holds the editable nemo_mft of the checkout: PYTHONPATH comes first on sys.path, and the
    # cwd, outside the checkout, has no conf/ either.
    env["PYTHONPATH"] = str(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([sys.executable, "-c", "import nemo_mft.finetune as f; print(f.__file__); "
                  "print(f.default_config_dir())"], env=env, cwd=elsewhere).splitlines()
    assert where == [str(site / "nemo_mft" / "finetune" / "__init__.py"), str(site / "nemo_mft" / "conf")]
    shown = _run([sys.executable, "-m", "nemo_mft.finetune", "--config-name", "mft_tiny", "--cfg", "job",
                  "dataset.dataset_root=/x"], env=env, cwd=elsewhere)
    assert "num_layers: 2" in shown and "dataset_root: /x" in shown, shown
