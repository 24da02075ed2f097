"""Bad input, everywhere: hypothesis throws malformed configs, command lines, schemas, data, model outputs,
text files and image files at the public API and the CLI.

Every case is invalid by construction, and each must get a robustkit error before any work: from the CLI,
exit status 2 and one line ``robustkit: error: ...`` on stderr (no traceback unless ``--debug``) with
nothing written; from Python, a :class:`~robustkit.RobustkitError` (ConfigError, DataError or ModelError)
with the model untouched (one probe batch at most). Where the outcome of a random input is not known in
advance (random bytes as a data file), the property is weaker: a robustkit error or a result, never
another exception.

``TRAINER_REFUSALS`` lists inputs the trainer once crashed on, and
``test_a_model_without_input_gradients_is_evaluated`` a model output the attacks once crashed on: both
are refused or handled now.

The number of distinct cases tried is printed at the end of the module (``pytest -s``) and written to
``bad_input_cases.json`` in pytest's base temporary folder (one file per xdist worker).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import string
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk
from domains.images import ImagesDomain, ImagesOptions
from domains.images.readers import load_cifar10, load_folder, load_mnist, parse_cifar10, parse_idx
from domains.tabular import Relation, Schema, TabularOptions
from domains.text.data import read_source
from robustkit import pipeline
from robustkit.cli import _parser, main
from robustkit.config import RunConfig
from robustkit.evaluation import PRESETS
from robustkit.training.methods import NAMES as METHOD_NAMES


def cases(n: int) -> settings:
    """Settings for ``n`` examples under the ci profile (25 examples), scaled with the profile's (thorough: 20 n)."""
    scale = max(1, settings().max_examples // 25)
    slow = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    return settings(max_examples=n * scale, deadline=None, suppress_health_check=slow)


# ----------------------------------------------------------------------------- counting the cases
#: distinct cases tried, per test: the repr of each case (hypothesis replays some examples; they count once).
#: Known crashes (xfail) are counted apart, under names starting with "known crash".
TRIED: dict[str, set[str]] = {}


def tried(test: str, *case: Any) -> None:
    TRIED.setdefault(test, set()).add(repr(case))


class Tripwire(Exception):
    """Raised where a bad case got further than it may: a real run started, or a download."""


@pytest.fixture(autouse=True, scope="module")
def tripwires_and_count(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No case may train a model or download anything (a valid case slipped in); report the count at the end."""
    failed_before = request.session.testsfailed

    def refuse(what: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise Tripwire(f"a bad-input case started {what}")

        return fail

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "_train", refuse("training"))
        mp.setattr("domains.images.readers._download", refuse("a download"))
        yield
    per_test = {name: len(cases) for name, cases in sorted(TRIED.items())}
    total = sum(n for name, n in per_test.items() if not name.startswith("known crash"))
    known = sum(n for name, n in per_test.items() if name.startswith("known crash"))
    failed = request.session.testsfailed - failed_before
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    report = tmp_path_factory.getbasetemp() / f"bad_input_cases{'' if worker == 'main' else '-' + worker}.json"
    summary = {"total": total, "failed_tests": failed, "known_crashes_xfail": known, "per_test": per_test}
    report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    outcome = "none crashed" if not failed else f"{failed} test(s) failed"
    print(f"\nbad input: {total} distinct cases tried, {outcome}; {known} known crashes marked xfail ({report})")


def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder per hypothesis example (function-scoped tmp_path does not reset between examples)."""
    base = tmp_path_factory.getbasetemp() / "bad-input"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(dir=base))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------- strategies shared
#: argv and file names cannot hold NUL; no surrogates (not encodable)
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
WORDS = st.text(TEXT, min_size=1, max_size=12)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
#: nested junk: anything YAML or JSON can hold
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(TEXT, max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=6), inner, max_size=3),
    max_leaves=8,
)
NOT_A_STRING = JUNK.filter(lambda v: not isinstance(v, str) and v is not None)
NOT_A_NUMBER = JUNK.filter(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, int | float)))


def bad_number(positive: bool = False) -> st.SearchStrategy[Any]:
    """Not a finite number >= 0 (> 0 with ``positive``)."""
    negative = st.floats(max_value=-1e-9, allow_nan=False) | st.integers(max_value=-1)
    return st.one_of(NON_FINITE, negative, NOT_A_NUMBER, *([st.just(0), st.just(0.0)] if positive else []))


def bad_count(most: int | None = None) -> st.SearchStrategy[Any]:
    """Not an integer in 1..most."""
    parts = [st.integers(max_value=0), st.floats(allow_nan=True), NOT_A_NUMBER, st.booleans()]
    if most is not None:
        parts.append(st.integers(min_value=most + 1))
    return st.one_of(*parts)


# ============================================================================= 1. configs
DEVICE_OK = re.compile(r"cpu|cuda(:\d+)?")
BAD_FACTORIES = ["no_such_module_rk:f", "robustkit:__version__", "robustkit.errors:ConfigError", "math:no_such_f",
                 ":f", "m:", "robustkit:no.such.attr"]

#: key -> (a valid value for `harden toy`, values RunConfig itself refuses, values only the run refuses)
CONFIG_KEYS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any], st.SearchStrategy[Any] | None]] = {
    "domain": (st.just("toy"), NOT_A_STRING | st.none(), None),
    "data": (st.sampled_from(["toy", None]), NOT_A_STRING, WORDS.filter(lambda s: s != "toy")),
    "method": (
        st.sampled_from(["standard", "fgsm-mix", None]),
        NOT_A_STRING | st.text(" \t\n", max_size=3),
        WORDS.filter(lambda s: s.strip() and s not in METHOD_NAMES),
    ),
    "budget": (st.floats(0, 0.5), bad_number(), None),
    "budgets": (
        st.lists(st.floats(0, 0.5), min_size=1, max_size=3),
        st.just([]) | NOT_A_STRING.filter(lambda v: not isinstance(v, list)) | st.lists(bad_number(), min_size=1,
                                                                                         max_size=3),
        None,
    ),
    "epochs": (st.integers(1, 2), bad_count(), None),
    "batch_size": (st.integers(16, 64), bad_count(), None),
    "lr": (st.floats(1e-4, 0.1), bad_number(positive=True), None),
    "budget_warmup": (st.floats(0, 2), bad_number(), None),
    "preset": (st.sampled_from(sorted(PRESETS)), NOT_A_STRING | WORDS.filter(lambda s: s not in PRESETS), None),
    "seed": (st.integers(0, 2**32), st.integers(max_value=-1) | st.integers(min_value=2**64) | NOT_A_NUMBER
             | st.floats(), None),
    "device": (st.just("cpu"), NOT_A_STRING | st.text(TEXT, max_size=8).filter(lambda s: not DEVICE_OK.fullmatch(s)),
               None),
    "threads": (st.just(1), bad_count(2**31 - 1), None),
    "model": (WORDS, NOT_A_STRING, None),
    "model_factory": (st.none(), NOT_A_STRING | WORDS.filter(lambda s: ":" not in s), st.sampled_from(BAD_FACTORIES)),
    "weights": (st.none(), NOT_A_STRING | WORDS.filter(lambda s: not s.endswith(".safetensors")),
                WORDS.map(lambda s: f"missing/{s}.safetensors")),
    "options": (
        st.just({}) | st.fixed_dictionaries({"hidden": st.integers(1, 8)}),
        NOT_A_STRING.filter(lambda v: not isinstance(v, dict))
        | st.dictionaries(st.integers() | st.none() | st.booleans(), JUNK, min_size=1, max_size=3),
        st.fixed_dictionaries({"hidden": JUNK.filter(lambda v: isinstance(v, bool) or not isinstance(v, int)
                                                     or v < 1)})
        | st.dictionaries(WORDS.filter(lambda s: s != "hidden"), JUNK, min_size=1, max_size=2),
    ),
}
UNKNOWN_KEY = st.one_of(WORDS.filter(lambda s: s not in CONFIG_KEYS), st.integers(), st.none(), st.booleans(),
                        st.floats(allow_nan=False))


@st.composite
def bad_configs(draw: st.DrawFn, run_level: bool = True) -> tuple[dict[Any, Any], str]:
    """A config mapping with valid entries and at least one bad one; returns it and where it must fail:
    "config" (RunConfig refuses it) or "run" (only the domain or the pipeline can tell)."""
    keys = list(CONFIG_KEYS)
    mapping: dict[Any, Any] = {k: draw(CONFIG_KEYS[k][0]) for k in draw(st.sets(st.sampled_from(keys), max_size=6))}
    levels: dict[Any, str] = {}  # key -> where its bad value fails (a later draw for the same key replaces it)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["config", "run", "unknown"] if run_level else ["config", "unknown"]))
        if kind == "unknown":
            key = draw(UNKNOWN_KEY)
            mapping[key], levels[key] = draw(JUNK), "config"
            continue
        key = draw(st.sampled_from([k for k in keys if kind == "config" or CONFIG_KEYS[k][2] is not None]))
        bad = CONFIG_KEYS[key][1] if kind == "config" else CONFIG_KEYS[key][2]
        assert bad is not None
        mapping[key], levels[key] = draw(bad), kind
    return mapping, "config" if "config" in levels.values() else "run"


@cases(300)
@given(bad_configs(run_level=False))
@example(({1: 2, "budget": 0.1}, "config"))  # keys of mixed types could not be sorted (TypeError)
@example(({"preset": ["quick"]}, "config"))  # unhashable preset (TypeError)
@example(({"seed": 2**64}, "config"))  # too large for torch (ValueError later)
@example(({"threads": 2**31}, "config"))  # too large for torch (ValueError later)
@example(({"device": "cuda:abc"}, "config"))  # not a device (RuntimeError where CUDA is available)
@example(({"options": {1: "a", "b": 2}}, "config"))  # option names of mixed types (TypeError in the domains)
def test_a_bad_config_mapping_is_a_config_error(case: tuple[dict[Any, Any], str]) -> None:
    mapping, level = case
    assert level == "config"
    tried("config mapping", mapping)
    with pytest.raises(rk.ConfigError):
        RunConfig.from_dict(mapping)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured; torch's thread count restored (--threads sets it)."""
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, out: str, err: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustkit: error: "), err
    assert "Traceback" not in err and out == ""


@cases(80)
@given(bad_configs())
@example(({"options": {"hidden": -1}}, "run"))  # refused after config.yaml was written
@example(({"weights": "w.safetensors"}, "run"))  # ignored without a model factory
@example(({"options": {"schema": "s.yaml"}}, "run"))  # ignored by the toy domain
def test_a_bad_config_file_exits_2_with_one_line_and_writes_nothing(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[dict[Any, Any], str]
) -> None:
    mapping, _ = case
    folder = case_dir(tmp_path_factory)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    tried("config file", mapping)
    before = files_under(folder)
    assert_refused(*run_cli(["harden", "toy", "--config", str(config), "--out", str(folder / "run")]))
    assert files_under(folder) == before


def not_a_mapping(raw: bytes) -> bool:
    """Bytes that are not a YAML mapping (an empty document is an empty config, which is valid)."""
    try:
        loaded = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return True
    return loaded is not None and not isinstance(loaded, dict)


CONFIG_BYTES = st.one_of(
    st.binary(max_size=60),
    st.text(TEXT, max_size=60).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"[]", b"0", b"false", b"''", b"- domain: toy", b"!!python/object/apply:os.system ['true']",
                     b"{budget: 0.1", b"\xff\xfe\x00b\x00u", b"budget: 0.1\n  epochs: 2", b"key: [1, 2"]),
)


@cases(40)
@given(CONFIG_BYTES.filter(not_a_mapping))
@example(b"[]")  # read as an empty config
@example(b"budget: \xff")  # not UTF-8 (UnicodeDecodeError)
@example(b"key: [1, 2")  # YAML's message spans several lines
def test_a_config_file_that_is_not_a_mapping_exits_2(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    folder = case_dir(tmp_path_factory)
    (folder / "config.yaml").write_bytes(raw)
    tried("config bytes", raw)
    assert_refused(*run_cli(["harden", "toy", "--config", str(folder / "config.yaml"), "--out", str(folder / "o")]))
    assert not (folder / "o").exists()


# ============================================================================= 2. command lines
def harden_options() -> set[str]:
    """Every option string of ``robustkit harden`` (argparse takes unambiguous prefixes of them)."""
    sub = next(a for a in _parser()._actions if a.dest == "command")
    harden = sub.choices["harden"]  # type: ignore[index]
    return {s for action in harden._actions for s in action.option_strings}


OPTIONS = harden_options()
ARG = st.text(TEXT, max_size=10)
#: flag -> (a valid value, invalid values); values are lists of argv tokens
FLAGS: dict[str, tuple[list[str], st.SearchStrategy[list[str]]]] = {
    "--budget": (["0.1"], st.sampled_from(["nan", "inf", "-1", "-0.5", "abc", "", "1e999", "-inf"]).map(lambda v: [v])),
    "--epochs": (["1"], st.sampled_from(["0", "-3", "1.5", "x", "", "1e3"]).map(lambda v: [v])),
    "--batch-size": (["32"], st.sampled_from(["0", "-1", "2.0", "many"]).map(lambda v: [v])),
    "--threads": (["1"], st.sampled_from(["0", "-2", str(2**31), str(10**30), "one"]).map(lambda v: [v])),
    "--seed": (["3"], st.sampled_from(["-1", str(2**64), "1.5", "seed", str(-(2**70))]).map(lambda v: [v])),
    "--lr": (["0.01"], st.sampled_from(["0", "-0.1", "nan", "inf", "fast"]).map(lambda v: [v])),
    "--budgets": (["0.05", "0.1"], st.sampled_from([["nan"], ["-1"], ["0.1", "inf"], [], ["x"]])),
    "--preset": (["quick"], ARG.filter(lambda s: s not in PRESETS).map(lambda v: [v])),
    "--method": (["fgsm-mix"], ARG.filter(lambda s: s.strip() and s not in METHOD_NAMES).map(lambda v: [v])),
    "--device": (["cpu"], ARG.filter(lambda s: not DEVICE_OK.fullmatch(s)).map(lambda v: [v])),
    "--data": (["toy"], ARG.filter(lambda s: s not in ("toy", "")).map(lambda v: [v])),
    "--model-factory": ([], st.sampled_from([*BAD_FACTORIES, "no_colon"]).map(lambda v: [v])),
    "--weights": ([], st.sampled_from(["w.safetensors", "w.pt", "", "missing/x.safetensors"]).map(lambda v: [v])),
    "--schema": ([], ARG.map(lambda v: [v])),  # the toy domain takes no schema, target or model option
    "--target": ([], ARG.map(lambda v: [v])),
    "--model": ([], ARG.map(lambda v: [v])),
    "--config": ([], st.just(["missing-config.yaml"])),
    "--resume": ([], st.just(["missing-run"])),
}
SWITCHES = ["--force", "--quiet"]
#: data specs other domains refuse fast (never a download, never valid); {missing} is a path that does not exist
BAD_SPECS = {
    "images": ["mnist:{missing}", "fashion-mnist:{missing}", "cifar10:{missing}", "folder:", "folder:{missing}",
               "digits:x", "bogus", "imagenet:{missing}"],
    "tabular": ["csv:", "parquet:", "csv:{missing}.csv", "synthetic:x", "xlsx:{missing}", "synthetics"],
    "text": ["csv:", "json:{missing}", "sms:{missing}", "demo:5", "demo:abc", "demo:-1", "parquet:{missing}",
             "xml:x", "demo:0"],
}
UNKNOWN_FLAG = st.text(string.ascii_lowercase + "-", min_size=1, max_size=8).map(lambda s: "--" + s).filter(
    lambda f: not any(o.startswith(f) for o in OPTIONS))
DOMAIN_NAMES = set(rk.available_domains()) | {"toy-small", "toy-narrow"}


@st.composite
def bad_argvs(draw: st.DrawFn, missing: str) -> list[str]:
    """``harden DOMAIN [flags]``, each flag at most once (argparse keeps the last), at least one part bad."""
    flags = draw(st.sets(st.sampled_from(sorted(FLAGS)), max_size=5))
    bad = draw(st.sets(st.sampled_from(sorted(flags)), max_size=len(flags))) if flags else set()
    domain_part = draw(st.sampled_from(["toy", "unknown", "other"]))
    argv = ["harden"]
    if domain_part == "unknown":
        argv.append(draw(ARG.filter(lambda s: s not in DOMAIN_NAMES and not s.startswith("-"))))
    elif domain_part == "other":
        domain = draw(st.sampled_from(sorted(BAD_SPECS)))
        argv += [domain, "--data", draw(st.sampled_from(BAD_SPECS[domain])).format(missing=missing)]
        flags.discard("--data")
    else:
        argv.append("toy")
    extra = draw(st.lists(UNKNOWN_FLAG, max_size=2))
    if domain_part == "toy" and not (bad | set(extra)) and not (flags & {"--model-factory", "--weights", "--schema",
                                                                         "--target", "--model", "--config",
                                                                         "--resume"}):
        bad = {draw(st.sampled_from(sorted(FLAGS)))}  # make one flag bad
        flags |= bad
    for flag in sorted(flags):
        valid, invalid = FLAGS[flag]
        value = draw(invalid) if flag in bad or not valid else valid
        argv += [flag, *value]
    for switch in draw(st.sets(st.sampled_from(SWITCHES))):
        argv.append(switch)
    argv += extra
    return argv


@cases(150)
@given(st.data())
def test_a_bad_command_line_exits_2_with_one_line_and_writes_nothing(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    folder = case_dir(tmp_path_factory)
    argv = data.draw(bad_argvs(str(folder / "missing")))
    tried("argv", argv)
    out = folder / "run"
    before = files_under(folder)
    cwd = os.getcwd()
    os.chdir(folder)  # relative paths in the case (w.safetensors, missing-run) resolve inside it
    try:
        assert_refused(*run_cli([*argv, "--out", str(out)]))
    finally:
        os.chdir(cwd)
    assert files_under(folder) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["harden", "toy", "--threads", str(2**31)],  # ValueError from torch
        ["harden", "toy", "--seed", str(2**64)],  # ValueError from torch
        ["harden", "toy", "--device", "cuda:abc"],
        ["harden", "toy", "--weights", "w.safetensors"],  # ignored without --model-factory
        ["harden", "toy", "--schema", "s.yaml"],  # ignored by the toy domain
        ["evaluate", "toy", "--model", "missing-run"],
        ["attack", "toy"],
        ["evaluate", "toy", "--model-factory", "no_such_module_rk:f"],
        ["evaluate", "toy", "--model", "missing-run", "--weights", "w.safetensors"],
        ["evaluate", "toy", "--budget", "0.1", "nan"],
        ["attack", "toy", "--model", "missing-run", "--seed", "-1"],
        ["harden"],
        ["frobnicate", "toy"],
    ],
)
def test_these_command_lines_exit_2_with_one_line_and_write_nothing(tmp_path: Path, argv: list[str]) -> None:
    tried("other commands", argv)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert_refused(*run_cli([*argv, "--out", str(tmp_path / "run")]))
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []


@cases(15)
@given(bad_configs(run_level=False))
def test_debug_shows_the_error_itself(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[dict[Any, Any], str]
) -> None:
    folder = case_dir(tmp_path_factory)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(case[0]), encoding="utf-8")
    tried("--debug", case[0])
    with pytest.raises(rk.ConfigError):
        run_cli(["harden", "toy", "--config", str(config), "--out", str(folder / "run"), "--debug"])
    assert not (folder / "run").exists()


# ============================================================================= 3. schemas
NUMERIC_TYPES = ["continuous", "integer", "binary"]


@st.composite
def good_columns(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(["amount", "fee", "age", "total", "flag", "region", "hour"]), min_size=1,
                          max_size=4, unique=True))
    columns: dict[str, dict[str, Any]] = {}
    for name in names:
        kind = "categorical" if name == "region" else "binary" if name == "flag" else draw(st.sampled_from(
            ["continuous", "integer"]))
        body: dict[str, Any] = {"type": kind, "mutable": draw(st.booleans()), "cost": draw(st.floats(0.1, 5))}
        if kind == "categorical":
            body["categories"] = ["eu", "us", "asia"]
        elif kind != "binary":
            body.update(lower=0, upper=draw(st.integers(1, 1000)))
        columns[name] = body
    return columns


BAD_RELATIONS = st.one_of(
    st.sampled_from(["a <=", "<= b", "a < b", "a = b = c", "2 * * a <= 1", "a <= 1e999", "a - a <= 1", "", "  ",
                     "a <= b +", "3 <= 4", "a >= 2 *", "a ** 2 <= 1", "(a) <= 1", "a <= b; c <= d"]),
    st.text(TEXT, max_size=20).filter(lambda t: _parse_fails(t)),
)


def _parse_fails(text: str) -> bool:
    try:
        Relation.parse(text)
    except rk.ConfigError:
        return True
    return False


@st.composite
def bad_schemas(draw: st.DrawFn) -> dict[Any, Any]:
    """A schema mapping with one guaranteed mistake (or several)."""
    columns = draw(good_columns())
    spec: dict[Any, Any] = {"columns": columns, "budget": draw(st.floats(0, 10))}
    name = draw(st.sampled_from(sorted(columns)))
    body = columns[name]
    for _ in range(draw(st.integers(1, 2))):
        mistake = draw(st.sampled_from([
            "type", "bounds", "direction", "cost", "mutable", "categories", "cat_bounds", "num_categories",
            "bound_type", "binary_bounds", "setting", "key", "columns", "body", "budget", "target", "relation",
            "relation_column", "relation_categorical", "relations_type", "drop",
        ]))
        if mistake == "type":
            body["type"] = draw(JUNK.filter(lambda v: v not in ("continuous", "integer", "binary", "categorical")))
        elif mistake == "bounds":
            low = draw(st.floats(-1e6, 1e6))
            body.update(type=draw(st.sampled_from(["continuous", "integer"])), lower=low,
                        upper=low - draw(st.floats(1e-3, 1e6)))
            body.pop("categories", None)
        elif mistake == "direction":
            body["direction"] = draw(JUNK.filter(lambda v: v not in ("both", "increase", "decrease")))
        elif mistake == "cost":
            body["mutable"] = True
            body["cost"] = draw(st.one_of(NON_FINITE, st.floats(max_value=0), st.integers(max_value=0), JUNK)
                                .filter(lambda v: not _number_at_least(v, 0, strict=True)))
        elif mistake == "mutable":
            body["mutable"] = draw(JUNK.filter(lambda v: not isinstance(v, bool)))
        elif mistake == "categories":
            body.update(type="categorical", direction="both")
            body.pop("lower", None), body.pop("upper", None)
            body["categories"] = draw(st.one_of(st.none(), st.lists(WORDS, max_size=1), st.just(["a", "a"]),
                                                st.integers(), st.text(max_size=1), st.just({})))
        elif mistake == "cat_bounds":
            body.update(type="categorical", categories=["a", "b"], lower=draw(st.floats(-10, 10)))
        elif mistake == "num_categories":
            body.update(type=draw(st.sampled_from(NUMERIC_TYPES)), categories=["a", "b"])
        elif mistake == "bound_type":
            body.update(type="continuous", lower=draw(JUNK.filter(lambda v: v is not None and _as_float(v) is None)
                                                      | st.just(math.nan)))
            body.pop("categories", None)
        elif mistake == "binary_bounds":
            body.update(type="binary", lower=draw(st.integers(-5, -1)), upper=1)
            body.pop("categories", None)
        elif mistake == "setting":
            body[draw(st.one_of(WORDS, st.integers(), st.none()).filter(
                lambda k: k not in ("type", "mutable", "lower", "upper", "direction", "cost", "categories")))] = 1
        elif mistake == "key":
            spec[draw(st.one_of(WORDS, st.integers(), st.none(), st.booleans()).filter(
                lambda k: k not in ("budget", "target", "columns", "relations", "drop")))] = draw(JUNK)
        elif mistake == "columns":
            spec["columns"] = draw(st.one_of(st.just({}), st.lists(WORDS, max_size=3), st.integers(), st.none(),
                                             st.text(max_size=5)))
            break
        elif mistake == "body":
            columns[name] = draw(st.one_of(st.lists(JUNK, min_size=1, max_size=3), st.integers(min_value=1),
                                           st.text(TEXT, min_size=1, max_size=5), st.just(True)))
            break
        elif mistake == "budget":
            spec["budget"] = draw(st.one_of(NON_FINITE, st.floats(max_value=-1e-9), JUNK).filter(
                lambda v: v is not None and not _number_at_least(v, 0)))
        elif mistake == "target":
            spec["target"] = draw(st.one_of(st.sampled_from(sorted(columns)), NOT_A_STRING.filter(bool),
                                            st.just("")).filter(lambda v: v is not None and v is not False))
        elif mistake == "relation":
            spec["relations"] = [draw(BAD_RELATIONS)]
        elif mistake == "relation_column":
            spec["relations"] = [f"{name} <= nowhere_column + 1"]
        elif mistake == "relation_categorical":
            columns["region"] = {"type": "categorical", "categories": ["a", "b"]}
            spec["relations"] = ["region <= 1"]
        elif mistake == "relations_type":
            spec["relations"] = draw(st.one_of(st.integers(min_value=1), st.text(TEXT, min_size=1, max_size=5),
                                               st.dictionaries(WORDS, JUNK, min_size=1, max_size=2)))
        elif mistake == "drop":
            spec["drop"] = draw(st.one_of(st.just([name]), st.lists(NOT_A_STRING, min_size=1, max_size=2),
                                          st.just([""]), st.integers(min_value=1)))
    return spec


def _as_float(value: Any) -> float | None:
    """``float(value)`` as the schema takes numbers (None if it cannot be one)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number_at_least(value: Any, low: float, strict: bool = False) -> bool:
    """Does the schema read ``value`` as a finite number >= low (> low with ``strict``)?"""
    f = _as_float(value)
    return f is not None and math.isfinite(f) and (f > low if strict else f >= low)


@cases(300)
@given(bad_schemas())
@example({"columns": {"n": {"type": "integer", "lower": math.inf}}, "budget": 1.0, 7: "mixed keys"})
@example({"columns": {"c": {"type": "categorical", "categories": 5}}, "budget": 1.0})
@example({"columns": {"a": {"type": "continuous"}}, "budget": 1.0, "target": ["a"]})
def test_a_bad_schema_is_a_config_error(spec: dict[Any, Any]) -> None:
    tried("schema", spec)
    with pytest.raises(rk.ConfigError):
        Schema.from_dict(spec)
    try:
        text = yaml.safe_dump(spec)
    except yaml.YAMLError:
        return
    if "\n" in text.strip():  # Schema.load reads YAML text (one line is a file name)
        with pytest.raises(rk.ConfigError):
            Schema.load(text)


@cases(200)
@given(st.text(TEXT | st.sampled_from(list("<=>+-*. 0123456789ab_")), max_size=30))
@example("x" * 300)
@example("a <= 1e999")
def test_any_relation_text_or_yaml_text_parses_or_is_a_config_error(text: str) -> None:
    tried("relation or schema text", text)
    with contextlib.suppress(rk.ConfigError):
        Relation.parse(text)
    with contextlib.suppress(rk.ConfigError):
        Schema.load(text)  # one-line texts are file names, some too long for the system


# ============================================================================= 4. data for evaluate and fit
SPACE = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))


class Counting(nn.Module):
    """A tiny 4 -> 3 classifier that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


DEFECTS = ["nan", "above", "below", "width", "rank", "extra_axis", "int", "labels_high", "labels_negative",
           "labels_fraction", "labels_2d", "labels_text", "fewer_labels", "more_labels", "empty", "mask_length",
           "mask_none", "mask_values"]


@st.composite
def bad_data(draw: st.DrawFn, defects: list[str] = DEFECTS) -> tuple[str, torch.Tensor, Any, dict[str, Any]]:
    """(defect, x, y, evaluate keyword arguments) with one defect in otherwise good data."""
    n = draw(st.integers(1, 12))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(n, 4, generator=gen)
    y: Any = torch.randint(0, 3, (n,), generator=gen)
    defect = draw(st.sampled_from(defects))
    kwargs: dict[str, Any] = {}
    i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, 3))
    if defect == "nan":
        x[i, j] = draw(NON_FINITE)
    elif defect == "above":
        x[i, j] = draw(st.floats(1.001, 1e30))
    elif defect == "below":
        x[i, j] = draw(st.floats(-1e30, -0.001))
    elif defect == "width":
        x = torch.rand(n, draw(st.sampled_from([1, 2, 3, 5, 9])), generator=gen)
    elif defect == "rank":  # the model cannot take these
        x = draw(st.sampled_from([x.reshape(-1)[: max(1, n - 1)] if n != 4 else x[0, :3], x.reshape(n, 2, 2),
                                  x.reshape(n, 1, 4, 1)]))
    elif defect == "extra_axis":  # the model takes it, and returns (n, 1, 3) logits
        x = x.reshape(n, 1, 4)
    elif defect == "double":  # for a float32 model
        x = x.double()
    elif defect == "int":
        x = (x * 2).to(draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool])))
    elif defect == "labels_high":
        y[i] = draw(st.integers(3, 2**40))
    elif defect == "labels_negative":
        y[i] = draw(st.integers(-(2**40), -1))
    elif defect == "labels_fraction":
        y = y.double()
        y[i] = y[i] + draw(st.floats(0.01, 0.99))
    elif defect == "labels_2d":
        y = y[:, None].repeat(1, draw(st.integers(2, 4)))
    elif defect == "labels_text":
        y = [draw(st.sampled_from(["ham", "0", "a"])) for _ in range(n)]
    elif defect == "fewer_labels":
        y = y[: draw(st.integers(0, n - 1))]
    elif defect == "more_labels":
        y = torch.cat([y, torch.zeros(draw(st.integers(1, 5)), dtype=torch.long)])
    elif defect == "empty":
        x, y = x[:0], y[:0]
    elif defect == "mask_length":
        kwargs["mask"] = torch.ones(n + draw(st.sampled_from([-1, 1, 5])), dtype=torch.bool)
        assume(len(kwargs["mask"]) != n)
    elif defect == "mask_none":
        kwargs["mask"] = torch.zeros(n, dtype=torch.bool)
    elif defect == "mask_values":
        kwargs["mask"] = draw(st.sampled_from([torch.full((n,), 2), "all", torch.ones(n, 2, dtype=torch.bool)]))
    return defect, x, y, kwargs


@cases(120)
@given(bad_data())
@example(("double", torch.rand(5, 4).double(), torch.tensor([0, 1, 2, 0, 1]), {}))  # RuntimeError in the model
@example(("width", torch.rand(5, 7), torch.tensor([0, 1, 2, 0, 1]), {}))  # RuntimeError in the model
def test_bad_data_for_evaluate_is_refused_before_any_attack(case: tuple[str, torch.Tensor, Any, dict[str, Any]]):
    defect, x, y, kwargs = case
    tried("evaluate data", defect, x, y, kwargs)
    model = Counting()
    with pytest.raises(rk.RobustkitError):
        rk.evaluate(model, (x, y), SPACE, attacks="quick", **kwargs)
    assert model.calls <= 1, f"{defect}: {model.calls} forward passes before the error"


#: defects of generated data for fit; inputs the model cannot take and the like are in TRAINER_REFUSALS
FIT_DEFECTS = ["nan", "above", "below", "extra_axis", "int", "labels_high", "labels_negative", "labels_fraction",
               "labels_2d", "fewer_labels", "more_labels", "empty"]


@cases(60)
@given(bad_data(FIT_DEFECTS), st.booleans())
def test_bad_data_for_fit_is_refused_before_any_step(case: tuple[str, torch.Tensor, Any, dict[str, Any]],
                                                    as_loader: bool) -> None:
    defect, x, y, _ = case
    tried("fit data", defect, x, y, as_loader)
    model = Counting()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sized = isinstance(y, torch.Tensor) and len(x) == len(y) and x.dim() >= 1
    # one batch: a loader's later batches are checked as they come, after work on the first
    loader: Any = DataLoader(TensorDataset(x, y), batch_size=16) if as_loader and sized else [(x, y)]
    if defect == "empty" and not as_loader:
        loader = []  # an empty loader; an empty first batch is in TRAINER_REFUSALS
    trainer = rk.AdversarialTrainer(model, SPACE, method="fgsm-mix", progress=False)
    with pytest.raises(rk.RobustkitError):
        trainer.fit(loader, epochs=1)
    assert model.calls <= 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was trained"


X4, Y4 = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])


class NoParameters(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3]


#: inputs fit once crashed on: (loader, trainer arguments, the exception it raised before it checked them).
#: Each is now a robustkit error before any training step.
TRAINER_REFUSALS = {
    "inputs of another width": ([(torch.rand(6, 5), Y4)], {}, "RuntimeError from the model"),
    "float64 inputs for a float32 model": ([(X4.double(), Y4)], {}, "RuntimeError from the model"),
    "validation inputs of another width": ([(X4, Y4)], {"val": (torch.rand(6, 5), Y4)}, "RuntimeError"),
    "a later batch of another width": ([(X4, Y4), (torch.rand(6, 5), Y4)], {}, "RuntimeError mid-epoch"),
    "an empty first batch": ([(X4[:0], Y4[:0])], {}, "RuntimeError from y.min() on no labels"),
    "inputs as a list": ([(X4.tolist(), Y4)], {}, "AttributeError: list has no .to"),
    "labels as a text": ([(X4, "abc")], {}, "TypeError from torch.as_tensor"),
    "a dict batch without 'y'": ([{"x": X4}], {}, "KeyError 'y'"),
    "a seed that is not an integer": ([(X4, Y4)], {"seed": "abc"}, "ValueError from int()"),
    "a seed of 2**64 or more": ([(X4, Y4)], {"seed": 2**70}, "ValueError from torch.manual_seed"),
    "an unknown device": ([(X4, Y4)], {"device": "nonsense"}, "RuntimeError from torch.device"),
    "a model without parameters": ([(X4, Y4)], {"model": NoParameters()}, "ValueError from Adam"),
}


@pytest.mark.parametrize("name", sorted(TRAINER_REFUSALS))
def test_the_trainer_refuses_bad_input_before_any_step(name: str) -> None:
    loader, arguments, _ = TRAINER_REFUSALS[name]
    tried("fit refusal", name)
    arguments = dict(arguments)
    model = arguments.pop("model", None) or Counting()
    val = arguments.pop("val", None)
    with pytest.raises(rk.RobustkitError):
        rk.AdversarialTrainer(model, SPACE, method="fgsm-mix", progress=False, **arguments).fit(
            loader, epochs=1, val_loader=val)


BAD_OPTIONS = st.one_of(
    st.fixed_dictionaries({"budgets": st.one_of(NON_FINITE, st.floats(max_value=-1e-9), st.just([]), st.just("0.1x"),
                                            st.lists(NON_FINITE, min_size=1, max_size=2), st.just({"a": 1}))}),
    st.fixed_dictionaries({"batch_size": bad_count()}),
    st.fixed_dictionaries({"attacks": st.one_of(WORDS.filter(lambda s: s not in PRESETS and s not in
                                                              rk.evaluation.ATTACKS), st.just([]),
                                                 st.lists(st.sampled_from(["quick", "pgd", None, 3]), min_size=1,
                                                          max_size=3).filter(lambda v: v != ["pgd"]
                                                                             and set(v) != {"pgd"}),
                                                 st.integers(), st.none())}),
    st.fixed_dictionaries({"seed": st.one_of(st.text(max_size=4), st.none(), st.floats(), st.booleans())}),
    st.fixed_dictionaries({"checks": st.one_of(st.text(max_size=4), st.integers(), st.none())}),
    st.fixed_dictionaries({"device": st.sampled_from(["nonsense", "gpu", "cuda:x", 99, "cpu:0:1"])}),
    st.fixed_dictionaries({"mask": st.sampled_from([lambda x, y: None, lambda x, y: "all", lambda x, y: y[:1] > -1,
                                                    lambda x, y: torch.ones(len(y), 2)])}),
)


@cases(60)
@given(BAD_OPTIONS)
@example({"seed": "abc"})  # ValueError from int()
def test_bad_evaluate_options_are_refused(kwargs: dict[str, Any]) -> None:
    tried("evaluate options", {k: getattr(v, "__code__", v) for k, v in kwargs.items()})
    model = Counting()
    with pytest.raises(rk.RobustkitError):
        rk.evaluate(model, (X4, Y4), SPACE, **kwargs)
    assert model.calls <= 1


# ============================================================================= 5. model outputs
@st.composite
def bad_outputs(draw: st.DrawFn) -> tuple[str, Any]:
    """(kind, parameter) of a model output that does not fit a 3-class task."""
    kind = draw(st.sampled_from(["rank", "rows", "no_logits", "non_finite", "container", "logits_attr", "dtype",
                                 "one_d", "varying"]))
    param: Any = None
    if kind == "rank":
        param = draw(st.sampled_from([(), (3, 2), (1, 1, 3)]))
    elif kind == "rows":
        param = draw(st.integers(-3, 3).filter(bool))
    elif kind == "non_finite":
        param = draw(NON_FINITE)
    elif kind == "container":
        param = draw(st.sampled_from(["none", "dict", "empty_tuple", "tuple_none", "list_text", "text", "int"]))
    elif kind == "logits_attr":
        param = draw(st.sampled_from([None, "logits", 3, [1.0, 2.0]]))
    elif kind == "dtype":
        param = draw(st.sampled_from([torch.long, torch.int32, torch.bool, torch.uint8, torch.complex64]))
    elif kind == "one_d":
        param = draw(st.booleans())  # True: also of the wrong length
    return kind, param


class BadOutput(nn.Module):
    def __init__(self, kind: str, param: Any) -> None:
        super().__init__()
        self.kind, self.param = kind, param
        self.net = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> Any:
        logits = self.net(x)
        n = len(x)
        kind, p = self.kind, self.param
        if kind == "rank":
            return logits.sum() if p == () else logits.sum(dim=1).reshape(n, *[1] * len(p)).expand(n, *p)
        if kind == "rows":
            return torch.cat([logits, logits])[: n + p]
        if kind == "no_logits":
            return logits[:, :0]
        if kind == "non_finite":
            return logits * 0 + p
        if kind == "container":
            return {"none": None, "dict": {"logits": logits}, "empty_tuple": (), "tuple_none": (None, logits),
                    "list_text": ["logits"], "text": "logits", "int": 3}[p]
        if kind == "logits_attr":
            return type("Output", (), {"logits": p})()
        if kind == "dtype":
            return logits.to(p) if p != torch.bool else logits > 0
        if kind == "one_d":
            return logits[:, 0][: n - 1 if p and n > 1 else n] if p else logits[:, 0]
        return logits[:, : 3 if n > 4 else 2]  # varying: 3 logits on full batches, 2 on the last


@cases(80)
@given(bad_outputs(), st.integers(5, 12))
@example(("dtype", torch.long), 6)  # NotImplementedError in the loss
@example(("dtype", torch.bool), 6)  # RuntimeError in the threshold
@example(("logits_attr", "logits"), 6)  # AttributeError: str has no .dim
def test_a_model_with_bad_outputs_is_a_robustkit_error(case: tuple[str, Any], n: int) -> None:
    kind, param = case
    tried("model outputs", kind, param, n)
    if kind == "varying":
        n = 6 + (n % 4)  # a batch of 5 then a last one of 1..4
    x = torch.rand(n, 4)
    y = torch.arange(n) % 3  # every class present: a single (1-D) logit cannot serve three classes
    with pytest.raises(rk.RobustkitError):
        rk.evaluate(BadOutput(kind, param), (x, y), SPACE, attacks="quick", batch_size=5)


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).detach()


def test_a_model_without_input_gradients_is_evaluated() -> None:
    """Outputs detached from the input once crashed the gradient attacks; now a failed gradient check."""
    tried("model outputs", "detached")
    x, y = torch.rand(20, 4), torch.arange(20) % 3
    report = rk.evaluate(Detached(), (x, y), SPACE, attacks="quick")
    assert not report.verdict.startswith("robust") and any(c.passed is False for c in report.checks)


# ============================================================================= 6a. text files
TEXT_KINDS = ["csv", "tsv", "json", "sms"]
#: cells that need no quoting in any of the formats
PLAIN = st.text(string.ascii_letters + string.digits + "_. -", min_size=1, max_size=8)


def _table(kind: str, header: list[str], rows: list[list[Any]]) -> bytes:
    if kind == "json":
        return "\n".join(json.dumps(dict(zip(header, r, strict=False))) for r in rows).encode("utf-8")
    if kind == "sms":
        return "\n".join("\t".join(str(c) for c in r) for r in rows).encode("utf-8")
    sep = "," if kind == "csv" else "\t"
    return "\n".join(sep.join(str(c) for c in line) for line in [header, *rows]).encode("utf-8")


@st.composite
def bad_text_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(kind, content) of a text data file with one guaranteed mistake."""
    kind = draw(st.sampled_from(TEXT_KINDS))
    good = [[f"message {i} " + draw(st.sampled_from(["hi", "win cash", "call me"])), draw(st.sampled_from(
        ["ham", "spam", "0", "1", "SPAM"]))] for i in range(draw(st.integers(1, 6)))]
    sms = [[label, text] for text, label in good]
    mistake = draw(st.sampled_from(["bytes", "columns", "label", "empty_texts", "empty_file", "json_records",
                                    "no_tab", "json_text_container"]))
    if mistake == "bytes":
        content = _table(kind, ["text", "label"], sms if kind == "sms" else good)
        at = draw(st.integers(0, len(content)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\x80abc"]))
        return kind, content[:at] + bad + content[at:]
    if mistake == "columns" and kind != "sms":
        header = draw(st.lists(PLAIN.filter(lambda s: s.strip() not in ("text", "label")), min_size=1, max_size=3,
                               unique=True))
        return kind, _table(kind, header, [[f"cell{i}" for i in range(len(header))] for _ in good])
    if mistake == "label" or (mistake == "columns" and kind == "sms"):
        label = draw(st.one_of(st.integers(2, 99).map(str), PLAIN.filter(
            lambda s: s.strip().lower() not in ("ham", "spam", "0", "1", "") and s == s.strip())))
        at = draw(st.integers(0, len(good) - 1))
        good[at][1] = label
        sms[at][0] = label
        return kind, _table(kind, ["text", "label"], sms if kind == "sms" else good)
    if mistake == "empty_texts":
        blank = [[draw(st.sampled_from(["", " ", "   "])), label] for _, label in good]
        if kind == "sms":
            return kind, _table(kind, [], [[label, text] for text, label in blank])
        if kind == "csv":  # quoted, so that an empty cell is an empty text
            return kind, _table(kind, ["text", "label"], [[f'"{t}"', label] for t, label in blank])
        return kind, _table(kind, ["text", "label"], blank)
    if mistake == "empty_file":
        return kind, draw(st.sampled_from([b"", b"\n", b"\n\n  \n", b"\xef\xbb\xbf"]))
    if mistake in ("json_records", "no_tab") and kind != "sms":
        records = draw(st.lists(JUNK.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3))
        lines = draw(st.booleans())
        content = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
        return "json", content.encode("utf-8")
    if kind == "sms":  # no tab between label and text
        return kind, "\n".join(f"{label} {text}" for text, label in good).encode("utf-8")
    # json_text_container: a text that is a list or an object
    good[0][0] = draw(st.sampled_from([[], ["a"], {}, {"a": 1}]))  # type: ignore[call-overload]
    return "json", _table("json", ["text", "label"], good)


@cases(60)
@given(bad_text_files())
@example(("json", b"null\n"))
@example(("json", b'null\n{"text": "hi", "label": "ham"}\n'))  # a segmentation fault in pyarrow's JSON reader
@example(("json", b'{"text": [], "label": "ham"}\n'))  # a list read as the text "[]"
def test_a_bad_text_file_is_a_robustkit_error(tmp_path_factory: pytest.TempPathFactory, case: tuple[str, bytes]):
    kind, content = case
    tried("text file", kind, content)
    file = case_dir(tmp_path_factory) / f"data.{kind}"
    file.write_bytes(content)
    with pytest.raises(rk.RobustkitError):
        read_source(f"{kind}:{file}", seed=0)


@cases(40)
@given(st.sampled_from(TEXT_KINDS), st.binary(max_size=80) | st.text(TEXT, max_size=80).map(str.encode))
def test_any_bytes_as_a_text_file_read_or_are_a_robustkit_error(
    tmp_path_factory: pytest.TempPathFactory, kind: str, content: bytes
) -> None:
    tried("text bytes", kind, content)
    file = case_dir(tmp_path_factory) / f"data.{kind}"
    file.write_bytes(content)
    with contextlib.suppress(rk.RobustkitError):
        source = read_source(f"{kind}:{file}", seed=0)
        assert source.texts and all(isinstance(t, str) and t.strip() for t in source.texts)
        assert set(source.labels) <= {0, 1}


# ============================================================================= 6b. image files
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


@st.composite
def idx_files(draw: st.DrawFn, labels: bool) -> bytes:
    """An IDX file: mostly right headers (magic, type, dimensions) with something off, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=40))
    code = draw(st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0B, 0x0D, 0x00, 0x07]))
    ndim = draw(st.sampled_from([1, 3] if not labels else [1, 1, 2]) | st.integers(0, 4))
    small = 1 if labels else 4
    dims = [draw(st.sampled_from([small, 2, 0]) | st.integers(0, 6)) for _ in range(ndim)]
    header = bytes([0, 0, code, ndim]) + struct.pack(f">{ndim}I", *dims)
    size = math.prod(dims) * {0x08: 1, 0x09: 1, 0x0B: 2, 0x0D: 4}.get(code, 1)
    payload = draw(st.binary(min_size=size, max_size=size)) if size <= 2000 else b""
    if labels and code == 0x08:
        payload = bytes(b % draw(st.sampled_from([10, 11, 256])) for b in payload)
    return header + payload + draw(st.sampled_from([b"", b"\x00"]))


@cases(60)
@given(st.tuples(idx_files(False), idx_files(True), idx_files(False), idx_files(True)), st.booleans())
def test_idx_files_read_or_are_a_robustkit_error(
    tmp_path_factory: pytest.TempPathFactory, files: tuple[bytes, ...], through_domain: bool
) -> None:
    tried("idx", files, through_domain)
    folder = case_dir(tmp_path_factory)
    for name, raw in zip(MNIST_FILES, files, strict=True):
        (folder / name).write_bytes(raw)
    try:
        if through_domain:
            data = ImagesDomain().load_data(f"mnist:{folder}", seed=0, options=ImagesOptions())
            assert min(len(data.train), len(data.val), len(data.test)) > 0
        else:
            read = load_mnist(folder)
            assert read.test is not None and len(read.train.y) > 0 and int(read.train.y.max()) < 10
    except rk.RobustkitError:
        return
    for raw in files:
        parse_idx(raw)  # every file read was a real IDX file


@cases(40)
@given(st.binary(max_size=3 * 3073 + 5), st.sampled_from(["bin", "archive"]))
@example(bytes([10]) + bytes(3072), "bin")
@example(b"", "bin")
def test_cifar10_bytes_read_or_are_a_robustkit_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes, where: str
) -> None:
    tried("cifar10", raw, where)
    folder = case_dir(tmp_path_factory)
    try:
        if where == "archive":
            (folder / "cifar-10-binary.tar.gz").write_bytes(raw)
            load_cifar10(folder)
            raise AssertionError("random bytes read as a CIFAR-10 archive")
        batch = parse_cifar10(raw)
    except rk.RobustkitError:
        return
    assert len(raw) % 3073 == 0 and tuple(batch.x.shape[1:]) == (3, 32, 32) and int(batch.y.max()) < 10


IMAGE_FORMATS = {"PNG": ["L", "RGB", "RGBA", "P", "1", "I;16", "LA"], "BMP": ["L", "RGB", "1", "P"],
                 "GIF": ["L", "P"], "TIFF": ["L", "RGB", "CMYK", "LAB", "F", "I", "YCbCr", "I;16B"],
                 "PPM": ["L", "RGB"]}
MAGICS = [b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"P5\n", b"P6\n",
          b"RIFF", b"\x00\x00\x01\x00", b""]


@st.composite
def image_file(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(bytes, is a real image): a small image in some mode and format, or garbage (with an image's magic)."""
    if draw(st.booleans()):
        fmt = draw(st.sampled_from(sorted(IMAGE_FORMATS)))
        mode = draw(st.sampled_from(IMAGE_FORMATS[fmt]))
        side = draw(st.sampled_from([6, 6, 6, 7])), draw(st.sampled_from([6, 6, 6, 5]))
        image = Image.new(mode, side)
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue(), True
    return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=40)), False


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow on garbage with a TIFF header
@cases(40)
@given(st.lists(st.lists(image_file(), max_size=4), min_size=1, max_size=3), st.sampled_from([None, 1, 3]))
@example([[(b"\x89PNG garbage", False)], [(b"BM", False)]], None)
def test_image_folders_with_garbage_read_with_a_counted_warning_or_are_a_robustkit_error(
    tmp_path_factory: pytest.TempPathFactory, classes: list[list[tuple[bytes, bool]]], channels: int | None
) -> None:
    tried("image folder", classes, channels)
    folder = case_dir(tmp_path_factory)
    for c, files in enumerate(classes):
        (folder / f"class{c}").mkdir()
        for k, (raw, _) in enumerate(files):
            (folder / f"class{c}" / f"{k}.img").write_bytes(raw)
    n_files = sum(len(files) for files in classes)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("robustkit")
    logger.addHandler(handler)
    try:
        data = load_folder(folder, channels=channels)
    except rk.RobustkitError:
        return
    finally:
        logger.removeHandler(handler)
    skipped = n_files - len(data.train.y)
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    if skipped:
        assert len(warnings) == 1 and warnings[0].startswith(f"skipped {skipped} unreadable file(s) in "), warnings
    else:
        assert warnings == []
    assert len(classes) >= 2 and data.train.x.dtype == torch.uint8 and data.train.x.shape[1] in (channels or 1, 3)


def test_a_lab_image_in_a_folder_is_a_data_error(tmp_path: Path) -> None:
    tried("image folder", "LAB TIFF")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("L", (6, 6)).save(tmp_path / name / "grey.png")
    Image.new("LAB", (6, 6)).save(tmp_path / "a" / "lab.tif")
    with pytest.raises(rk.DataError, match=r"lab\.tif: its LAB pixels cannot be converted to L"):
        load_folder(tmp_path, channels=1)


def test_idx_files_without_images_are_a_data_error(tmp_path: Path) -> None:
    tried("idx", "no images")
    empty_images = bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 28, 28)
    empty_labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 0)
    for name, raw in zip(MNIST_FILES, [empty_images, empty_labels] * 2, strict=True):
        (tmp_path / name).write_bytes(raw)
    with pytest.raises(rk.DataError, match="holds no pixels"):
        ImagesDomain().load_data(f"mnist:{tmp_path}", seed=0, options=ImagesOptions())



# ============================================================================= 7. attacks, spaces and trainer settings
BAD_SEEDS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), st.text(max_size=3), st.booleans(),
                      st.floats(allow_nan=True), st.none())
BAD_COUNTS = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True).filter(lambda v: v != int(v)
                                                                                   if math.isfinite(v) else True),
                       st.booleans(), st.text(max_size=3), st.none())
ATTACKS = {"PGD": lambda space, **kw: rk.PGD(space, **kw), "FGSM": lambda space, **kw: rk.FGSM(space, **kw),
           "APGD": lambda space, **kw: rk.APGD(space, **kw),
           "RandomSearch": lambda space, **kw: rk.RandomSearch(space, **kw)}
COUNTED = {"PGD": ["steps", "restarts", "eot"], "FGSM": ["eot"], "APGD": ["steps", "restarts", "eot"],
           "RandomSearch": ["queries"]}


@cases(200)
@given(st.sampled_from(sorted(ATTACKS)), st.data())
@example("FGSM", None)  # seed="a": ValueError from int()
@example("PGD", None)  # steps=2.5 ran 2 steps
def test_bad_attack_settings_are_a_config_error(name: str, data: st.DataObject | None) -> None:
    if data is None:
        key, value = ("seed", "a") if name == "FGSM" else ("steps", 2.5)
    else:
        key = data.draw(st.sampled_from(["seed", *COUNTED[name]]))
        value = data.draw(BAD_SEEDS if key == "seed" else BAD_COUNTS)
    tried("attack settings", name, key, value)
    with pytest.raises(rk.ConfigError):
        ATTACKS[name](SPACE, **{key: value})


class FewerRows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:-1]


@cases(150)
@given(st.sampled_from(sorted(ATTACKS)), bad_data(["width", "int", "labels_fraction", "labels_text", "labels_2d",
                                                    "labels_negative", "fewer_labels", "more_labels", "mask_length",
                                                    "mask_values", "nan", "above", "double", "fewer_rows"]))
def test_bad_data_given_to_an_attack_is_a_robustkit_error(name: str, case: tuple[str, Any, Any, dict]) -> None:
    defect, x, y, kwargs = case
    tried("attack data", name, defect, x, y, kwargs)
    model: nn.Module = FewerRows() if defect == "fewer_rows" else Counting()
    if isinstance(kwargs.get("mask"), str) or (defect == "mask_values" and kwargs["mask"].dim() != 1):
        kwargs = {"mask": torch.full((len(x),), 2)}
    with pytest.raises(rk.RobustkitError):
        ATTACKS[name](SPACE)(model, x, y, **kwargs)


BAD_EPS = st.one_of(st.text(max_size=4), st.booleans(), NON_FINITE, st.floats(max_value=-1e-9), st.none(),
                   st.lists(st.floats(), max_size=2), st.just(b"0.1"))


@st.composite
def bad_space_settings(draw: st.DrawFn) -> tuple[str, Any]:
    what = draw(st.sampled_from(["eps", "mask", "mask_length"]))
    if what == "eps":
        return what, draw(BAD_EPS)
    if what == "mask":  # values other than 0 and 1
        return what, draw(st.lists(st.integers(-3, 5), min_size=4, max_size=4).filter(
            lambda m: any(v not in (0, 1) for v in m)))
    return what, draw(st.integers(2, 9).filter(lambda n: n != 4))  # a mask of another length (1 broadcasts)


@cases(100)
@given(bad_space_settings(), st.sampled_from([rk.LinfBall, rk.L2Ball]))
@example(("eps", "0.1"), rk.LinfBall)  # accepted
@example(("eps", True), rk.LinfBall)  # accepted
@example(("mask", [0, 2, 1, 0]), rk.LinfBall)
@example(("mask_length", 3), rk.LinfBall)  # RuntimeError in project
def test_bad_space_settings_are_a_robustkit_error(case: tuple[str, Any], space: type) -> None:
    what, value = case
    tried("space settings", what, value, space.__name__)
    x = torch.rand(2, 4)
    if what == "eps":
        with pytest.raises(rk.ConfigError):
            space(eps=value)
    elif what == "mask":
        with pytest.raises(rk.ConfigError):
            space(eps=0.1, mask=torch.tensor(value))
    else:
        with pytest.raises(rk.DataError):
            space(eps=0.1, mask=torch.ones(value, dtype=torch.bool)).project(x + 0.05, x)


BAD_CLASS_WEIGHTS = st.one_of(st.just([0, 0, 0]), st.just([0.0, 0.0, 0.0]),
                              st.lists(st.floats(0, 5), min_size=3, max_size=3).map(lambda w: [w[0], -1.0, w[2]]),
                              st.lists(st.floats(0, 5), min_size=1, max_size=5).filter(lambda w: len(w) != 3),
                              st.lists(NON_FINITE, min_size=3, max_size=3), st.just(["a", "b", "c"]),
                              st.text(min_size=1, max_size=5).filter(lambda s: s != "balanced"), st.just({"a": 1}))


@cases(80)
@given(BAD_CLASS_WEIGHTS)
def test_bad_class_weights_are_refused_before_any_step(weights: Any) -> None:
    tried("class weights", weights)
    model = Counting()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(rk.RobustkitError):
        rk.AdversarialTrainer(model, SPACE, method="fgsm-mix", progress=False, class_weights=weights).fit(
            [(X4, Y4)], epochs=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_batch_norm_model_with_a_last_batch_of_one_is_refused_before_any_step() -> None:
    tried("fit refusal", "batch norm, last batch of 1")
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(TensorDataset(torch.rand(9, 4), torch.arange(9) % 3), batch_size=4)
    with pytest.raises(rk.DataError, match="last training batch holds 1 of the 9 examples"):
        rk.AdversarialTrainer(model, SPACE, method="pgd", progress=False).fit(loader, epochs=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was changed"


@pytest.mark.parametrize("other", ["architecture", "optimizer"])
def test_resuming_with_another_architecture_or_optimizer_is_refused_before_any_change(
    tmp_path: Path, other: str
) -> None:
    tried("fit refusal", f"resume with another {other}")
    rk.AdversarialTrainer(Counting(), SPACE, method="fgsm-mix", progress=False, checkpoint_dir=tmp_path).fit(
        [(X4, Y4)], epochs=1)
    model: nn.Module = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)) if other == "architecture" \
        else Counting()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if other == "optimizer" else None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(rk.ConfigError, match=f"another {'model' if other == 'architecture' else 'optimizer'}"):
        rk.AdversarialTrainer(model, SPACE, method="fgsm-mix", progress=False, optimizer=optimizer,
                              checkpoint_dir=tmp_path).fit([(X4, Y4)], epochs=2, resume=tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ============================================================================= 8. model folders, text options, YAML
@pytest.fixture(scope="module")
def tabular_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], torch.Tensor]:
    """A saved (untrained) tabular model folder, its model.json and a batch of its inputs."""
    from domains.tabular import TabularDomain

    domain = TabularDomain()
    data = domain.load_data("synthetic", 0, TabularOptions(n_rows=200))
    spec = domain.model_spec(data, TabularOptions())
    folder = tmp_path_factory.mktemp("model") / "model"
    domain.save_model(domain.build_model(spec), folder, spec, 0.5)
    x = next(iter(domain.loader(data.test, 4, shuffle=False)))[0]
    return folder, json.loads((folder / "model.json").read_text()), x


def _not_a_probability(v: Any) -> bool:
    return v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1)


@st.composite
def bad_model_jsons(draw: st.DrawFn, meta: dict[str, Any]) -> bytes:
    """The bytes of a model.json with one defect: not JSON, not an object, a spec or threshold of the wrong kind,
    a spec the tabular domain cannot build, or bytes that are not UTF-8."""
    good = json.dumps(meta).encode()
    kind = draw(st.sampled_from(["truncated", "not_object", "spec", "threshold", "spec_value", "bytes"]))
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "bytes":
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80"])) + good[at:]
    changed = json.loads(good)
    if kind == "not_object":
        return json.dumps(draw(JUNK.filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == "spec":
        changed["spec"] = draw(JUNK.filter(lambda v: v is not None and not isinstance(v, dict)) | st.none())
    elif kind == "threshold":
        changed["threshold"] = draw(JUNK.filter(_not_a_probability) | st.sampled_from([0, 1, 1.5, -0.1]))
    else:
        key = draw(st.sampled_from(["hidden", "mean", "std", "schema"]))
        width = len(changed["spec"]["mean"])
        changed["spec"][key] = draw(JUNK.filter(lambda v: not isinstance(v, list) or not v)
                                    | st.just([math.nan] * width) | st.just(["big"]))
    return json.dumps(changed).encode()


@cases(120)
@given(st.data())
def test_a_damaged_model_json_is_a_config_error_or_gives_outputs_the_probe_refuses(
    tmp_path_factory: pytest.TempPathFactory, tabular_model: tuple[Path, dict[str, Any], torch.Tensor],
    data: st.DataObject,
) -> None:
    from domains.tabular import TabularDomain

    source, meta, x = tabular_model
    raw = data.draw(bad_model_jsons(meta))
    tried("model.json", raw)
    folder = case_dir(tmp_path_factory)
    os.link(source / "model.safetensors", folder / "model.safetensors")
    (folder / "model.json").write_bytes(raw)
    try:
        model, _ = TabularDomain().load_model(folder)
    except rk.ConfigError:
        return
    # statistics of the right length holding NaN load, and the first probe batch refuses them (not finite)
    with torch.no_grad():
        assert not bool(torch.isfinite(model(x)).all()), f"accepted: {raw[:200]!r}"


TEXT_OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "target_fpr": JUNK.filter(lambda v: isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 0.5)
    | st.sampled_from([5, 0.5, 0, -0.01, math.nan]),
    "embedding_eps": JUNK.filter(lambda v: isinstance(v, bool) or not isinstance(v, int | float) or not v > 0)
    | st.sampled_from([-1, 0, math.inf, "abc"]),
    "dim": bad_count(), "channels": bad_count(), "vocab_size": bad_count(),
    "normalise": JUNK.filter(lambda v: not isinstance(v, bool)),
    "max_edited_share": JUNK.filter(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                                                 or not 0 < v <= 1)),
    "attack_tricks": st.one_of(st.just([]), st.text(max_size=4), st.lists(WORDS, min_size=1, max_size=2)),
}


@cases(150)
@given(st.one_of(
    st.sampled_from(sorted(TEXT_OPTION_VALUES)).flatmap(lambda k: TEXT_OPTION_VALUES[k].map(lambda v: {k: v})),
    st.dictionaries(WORDS.filter(lambda s: s not in ("text_column", "label_column", "label_names", "target", "dim",
                                                     "vocab_size", "channels", "attack_tricks", "max_edited_share",
                                                     "normalise", "embedding_eps", "target_fpr", "model")),
                    JUNK, min_size=1, max_size=2),
))
@example({"normalize": True})  # a typo of normalise, silently ignored
@example({"target_fpr": 5})  # silently changed the threshold
@example({"embedding_eps": "abc"})  # ValueError after config.yaml was written
def test_bad_text_options_are_a_config_error(options: dict[str, Any]) -> None:
    from domains.text import TextDomain
    from domains.text.obfuscation import TRICKS

    tricks = options.get("attack_tricks")
    assume(not isinstance(tricks, list) or not tricks or not set(tricks) <= set(TRICKS))
    tried("text options", options)
    with pytest.raises(rk.ConfigError):
        TextDomain().parse_options(options)


@st.composite
def yaml_with_a_repeated_key(draw: st.DrawFn) -> str:
    """A YAML mapping, possibly nested, in which one key is given twice."""
    key = draw(st.text(string.ascii_lowercase, min_size=1, max_size=6))
    others = draw(st.lists(st.text(string.ascii_lowercase, min_size=1, max_size=6).filter(lambda k: k != key),
                           max_size=3, unique=True))
    lines = [f"{k}: {draw(st.integers())}" for k in others]
    lines.insert(draw(st.integers(0, len(lines))), f"{key}: {draw(st.integers())}")
    lines.insert(draw(st.integers(0, len(lines))), f"{key}: {draw(st.integers())}")
    depth = draw(st.integers(0, 2))
    for level in range(depth):
        lines = [f"level{level}:"] + ["  " + line for line in lines]
    return "\n".join(lines) + "\n"


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    """Anchors that each repeat the one before ``width`` times, ``depth`` levels deep: more than MAX_VALUES values."""
    width, depth = draw(st.integers(2, 10)), draw(st.integers(3, 12))
    assume(width**depth > 200_000)
    lines = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@cases(100)
@given(yaml_with_a_repeated_key() | alias_bombs())
@example("epochs: 1\nepochs: 3\n")
def test_a_repeated_yaml_key_or_an_alias_bomb_is_a_config_error_fast(text: str) -> None:
    from robustkit.yamlfile import load_yaml

    tried("yaml", text)
    with pytest.raises(rk.ConfigError, match=r"given twice|alias bomb|more than"):
        load_yaml(text, "config.yaml")
