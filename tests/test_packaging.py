"""setup.py ships every module: a directory of nemo_mft without __init__.py would be left out of a wheel
(the editable install the tests use would not notice)."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_directory_is_a_package():
    packages = set(find_packages(where=str(ROOT), include=["nemo_mft", "nemo_mft.*"]))
    source_dirs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nemo_mft").rglob("*.py")}
    assert source_dirs <= packages, f"not packaged: {sorted(source_dirs - packages)}"
