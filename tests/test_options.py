"""Typed domain options: checked once from any mapping, and each domain's flags on the command line without the
core naming a domain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import robustkit as rk
from domains.images import ImagesOptions
from domains.tabular import TabularOptions
from domains.text import TextOptions
from domains.toy import ToyOptions
from robustkit.cli import main
from robustkit.options import DomainOptions

CLASSES = {"images": ImagesOptions, "tabular": TabularOptions, "text": TextOptions, "toy": ToyOptions}
#: values of every kind a YAML file can hold
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)


@given(st.sampled_from(sorted(CLASSES)), st.data())
def test_any_mapping_gives_checked_options_or_a_config_error_naming_the_option(domain: str, data: Any) -> None:
    cls: type[DomainOptions] = CLASSES[domain]
    keys = st.sampled_from([*cls.names(), "nrom"])
    values = data.draw(st.dictionaries(keys, VALUES, max_size=3))
    try:
        options = cls.parse(values, domain)
    except rk.ConfigError as exc:
        named = [k for k in values if f"options.{k} " in str(exc) or f"option {k!r}" in str(exc)]
        assert named, f"{exc} names none of {sorted(values)}"
        return
    assert options.to_dict() == values and options.given == set(values)
    assert cls.parse(options.to_dict(), domain) == options  # what config.yaml keeps reads back the same


def test_a_constructor_checks_its_values_and_counts_what_it_changed_as_given() -> None:
    assert TabularOptions(schema="s.yaml", split="stratified").given == {"schema"}
    with pytest.raises(rk.ConfigError, match=r"options\.hidden must be a list of positive integers"):
        TabularOptions(hidden=[64, 0])
    with pytest.raises(rk.ConfigError, match=r"options\.dim must be an integer, got 3\.5"):
        TextOptions(dim=3.5)  # type: ignore[arg-type]


def test_a_domain_s_flags_join_the_command_line_and_only_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["harden", "tabular", "--help"]) == 0
    tabular = capsys.readouterr().out
    assert all(f in tabular for f in ("--schema", "--positive-label", "--target-fpr", "options.schema"))
    assert main(["harden", "images", "--help"]) == 0
    images = capsys.readouterr().out
    assert "--norm" in images and "--schema" not in images
    assert main(["harden", "images", "--data", "digits", "--schema", "s.yaml"]) == 2
    assert "unrecognized arguments: --schema" in capsys.readouterr().err
    # the domain is found after flags that take values, one or several
    assert main(["harden", "--budgets", "0.5", "1", "--data", "synthetic", "--seed", "3", "tabular", "--help"]) == 0
    assert "--positive-label" in capsys.readouterr().out


def test_core_command_line_names_no_domain_and_no_domain_flag() -> None:
    source = (Path(rk.__file__).parent / "cli.py").read_text()
    assert not any(word in source for word in ("--schema", "--target", "--positive-label", "--norm"))


def test_a_registered_domain_s_flag_reaches_its_model_and_config_yaml(tmp_path: Path) -> None:
    import tests.toy_domain  # noqa: F401  (registers toy-small)

    out = tmp_path / "run"
    args = ["harden", "toy-small", "--hidden", "8", "--epochs", "1", "--preset", "quick", "--budgets", "0.25",
            "--quiet", "--out", str(out)]
    assert main(args) == 0
    spec = json.loads((out / "models" / "hardened" / "model.json").read_text())["spec"]
    assert spec["hidden"] == 8
    assert yaml.safe_load((out / "config.yaml").read_text())["options"] == {"hidden": 8}


def test_a_bad_flag_value_is_refused_before_anything_is_written(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["harden", "tabular", "--target-fpr", "0.7", "--out", str(out)]) == 2
    assert "options.target_fpr must be a number between 0 and 0.5, got 0.7" in capsys.readouterr().err
    assert not out.exists()


def test_every_preset_is_a_choice_of_the_command_line() -> None:
    from robustkit.cli import _parser
    from robustkit.evaluation import PRESETS

    for command in ("harden", "evaluate", "attack"):
        for preset in PRESETS:
            assert _parser().parse_args([command, "toy", "--preset", preset]).preset == preset


def test_the_collapsed_training_advice_names_a_flag_that_exists(tmp_path: Path) -> None:
    import re

    from robustkit import pipeline
    from robustkit.cli import _parser

    advised = set(re.findall(r"\(--([a-z-]+)\)", Path(pipeline.__file__).read_text()))
    assert "budget-warmup" in advised
    for flag in advised:
        args = _parser().parse_args(["harden", "toy", f"--{flag}", "2"])
        assert getattr(args, flag.replace("-", "_")) == 2
