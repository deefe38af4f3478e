"""Property: whatever overrides or recipe file a user gives, ``nemo-mft finetune`` composes and validates
them into a valid config, or stops with its user error (exit status 2, one line on stderr, no traceback).
Nothing else: no Hydra text, no exit status 1, no exception.

The command runs in-process (``finetune_main`` with a runner that records the config instead of training).
"""

import contextlib
import io
import os
import tempfile

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nemo_mft.config import FinetuneConfig, schema_keys
from nemo_mft.finetune import cli

PREFIX = "nemo-mft finetune: error: "
KEYS = schema_keys()
FRAGMENTS = ["=", "+", "++", "~", "[", "]", "{", "}", ",", ":", "${", "'", '"', "\\", " ", ".", "/", "@", "hydra",
             "null", "true", "???", "1e400", "-1", "nan", "inf", "choice(1,2)", "range(3)", "${oc.env:NOPE}",
             "${train.seed}", "${hydra:job.name}", "\x00", "é", "mft", "tau", "+mft.tau", "model.hidden_size"]
# No example database: nothing is written into the checkout; a failure prints its example.
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _mutated(key: str, data: st.DataObject) -> str:
    """``key`` with one character dropped or doubled: a near miss."""
    i = data.draw(st.integers(0, len(key) - 1))
    return key[:i] + key[i + 1:] if data.draw(st.booleans()) else key[:i] + key[i] * 2 + key[i:]


keys = st.one_of(
    st.sampled_from(KEYS),
    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,3}", fullmatch=True),
    st.text(max_size=12),
    st.sampled_from(["hydra.run.dir", "hydra.job.chdir", "hydra/job_logging", "a/b", "x@y"]),
)
values = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(str),
    st.text(max_size=20),
    st.lists(st.integers(-5, 5), max_size=3).map(str),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2).map(str),
    st.sampled_from(["null", "???", "${train.seed}", "${oops}", "'quoted'", "1,2", "[1,", "{a:", "${oc.env:NOPE}",
                     "choice(a,b)", "range(1,3)", "0.1", "2", "mft", "rope", "huggingface"]),
)
fragment_soup = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), min_size=1, max_size=6).map("".join)


LEAVES = [k for k in KEYS if "." in k]
plausible_values = st.sampled_from(["0", "1", "2", "3", "8", "64", "0.1", "0.5", "1.5", "-1", "true", "false",
                                    "null", "abc", "rope", "swiglu", "RMSNorm", "bf16", "ft", "kd", "kd_ce",
                                    "huggingface", "cosine", "${train.seed}", "${oops}", "'quoted'", "[1,2]", "???",
                                    "1e400", "nan", "inf", "''"])


@st.composite
def overrides(draw):
    """One override: a schema key with a plausible value (most often, so that many command lines get as
    far as validation), any key with any value, a near-miss key, a deletion, or arbitrary text."""
    prefix = draw(st.sampled_from(["", "+", "++"]))
    kind = draw(st.sampled_from(["schema"] * 5 + ["assign", "near_miss", "delete", "soup", "text"]))
    if kind == "schema":
        return f"{draw(st.sampled_from(['', '', '++']))}{draw(st.sampled_from(LEAVES))}={draw(plausible_values)}"
    if kind == "assign":
        return f"{prefix}{draw(keys)}={draw(values)}"
    if kind == "near_miss":
        return f"{prefix}{_mutated(draw(st.sampled_from(KEYS)), draw(st.data()))}={draw(values)}"
    if kind == "delete":
        return f"~{draw(keys)}" + draw(st.sampled_from(["", "=", f"={draw(values)}"]))
    return draw(fragment_soup) if kind == "soup" else draw(st.text(max_size=30))


def _not_an_option(text: str) -> bool:
    """Arguments that start with '-' are options (--help, --cfg print and exit 0); the overrides are fuzzed."""
    return not text.startswith("-")


def _run(argv):
    """(outcome, stderr): outcome is the recorded FinetuneConfig, or the exit status."""
    recorded = []
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            cli.finetune_main(argv, runner=lambda config, resolved_yaml: recorded.append((config, resolved_yaml)))
        except SystemExit as exit_info:
            return exit_info.code, err.getvalue()
    assert len(recorded) == 1, (argv, err.getvalue())
    return recorded[0], err.getvalue()


def _assert_valid_or_clean_error(argv):
    outcome, err = _run(argv)
    if isinstance(outcome, tuple):
        config, resolved_yaml = outcome
        assert isinstance(config, FinetuneConfig) and isinstance(resolved_yaml, str)
        assert err == "", err
        event("a valid config")
        return
    assert outcome == 2, (argv, outcome, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and len(lines[0]) > len(PREFIX), (argv, err)
    assert "Traceback" not in err and "HYDRA_FULL_ERROR" not in err, (argv, err)
    event("error: " + " ".join(lines[0][len(PREFIX):].split()[:3]))


@SETTINGS
@given(st.lists(overrides().filter(_not_an_option), max_size=3))
def test_any_overrides_give_a_valid_config_or_one_error_line(override_list):
    _assert_valid_or_clean_error(["--config-name", "mft_tiny", "dataset.dataset_root=/data", *override_list])


# A recipe file: the schema's sections with keys (real, near-miss or invented) and arbitrary YAML scalars.
yaml_scalars = st.one_of(st.integers(-3, 300), st.floats(allow_nan=False, allow_infinity=False, width=32),
                         st.booleans(), st.none(), st.text(max_size=12).map(repr),
                         st.sampled_from(["???", "${train.seed}", "${oops}", "[1, 2]", "{a: 1}", "[", "'"]))
sections = st.sampled_from([k for k in KEYS if "." not in k] + ["bogus", "hydra"])


@st.composite
def recipe_text(draw):
    """A recipe, mostly on the schema (defaults list), with up to four sections of up to three keys."""
    on_schema = draw(st.sampled_from([True, True, True, False]))
    lines = ["defaults:", "  - finetune_schema", "  - _self_"] if on_schema else []
    for section in draw(st.lists(sections, max_size=4, unique=True)):
        lines.append(f"{section}:")
        children = [k.split(".", 1)[1] for k in KEYS if k.startswith(f"{section}.")] or ["x"]
        for child in draw(st.lists(st.sampled_from(children) | st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                                   max_size=3, unique=True)):
            lines.append(f"  {child}: {draw(yaml_scalars)}")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe_text(), st.lists(overrides().filter(_not_an_option), max_size=2))
def test_any_recipe_file_gives_a_valid_config_or_one_error_line(text, override_list):
    with tempfile.TemporaryDirectory() as config_dir:
        with open(os.path.join(config_dir, "fuzz.yaml"), "w") as handle:
            handle.write(text)
        _assert_valid_or_clean_error(["--config-path", config_dir, "--config-name", "fuzz",
                                      "dataset.dataset_root=/data", *override_list])
