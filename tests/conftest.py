import os
import sys

# Make `tests/` importable as a plain directory (dist_utils, references) from every test module,
# including in spawned worker processes, which inherit this path through the environment.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS_DIR, os.environ.get("PYTHONPATH")) if p)
