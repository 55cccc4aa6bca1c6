"""The typed config loader: YAML + dotted overrides, errors that name the key."""

import dataclasses

import pytest

from arpo_jax.config import ConfigError, load_config, parse_overrides


@dataclasses.dataclass
class Inner:
    lr: float = 1e-6
    steps: int = 10
    name: str = "x"
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    seed: int = 0
    flag: bool = False
    mesh: tuple[int, int, int] = (1, 1, 1)
    note: str | None = None


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ninner:\n  lr: 2.0e-5\n  tags: [a, b]\n")
    cfg = load_config(Outer, f, ["inner.steps=7", "flag=true", "mesh=[2,2,2]", "note=hi"])
    assert cfg == Outer(inner=Inner(lr=2e-5, steps=7, tags=["a", "b"]), seed=3, flag=True, mesh=(2, 2, 2), note="hi")
    assert load_config(Outer, None, ["inner.lr=1"]).inner.lr == 1.0  # int accepted as float
    assert load_config(Outer, None, ["inner.lr=3e-3"]).inner.lr == 0.003  # YAML 1.1 reads this as a string
    f.write_text("inner:\n  lr: 1E-4\n")
    assert load_config(Outer, f).inner.lr == 1e-4


@pytest.mark.parametrize("override,match", [
    (["inner.stepz=3"], r"unknown config key 'inner\.stepz'"),
    (["sed=3"], r"unknown config key 'sed'"),
    (["inner.steps=abc"], r"inner\.steps: expected int, got str 'abc'"),
    (["inner.lr=fast"], r"inner\.lr: expected float, got str 'fast'"),
    (["flag=3"], r"flag: expected bool"),
    (["mesh=[1,2]"], r"mesh: expected 3 items"),
    (["inner=5"], r"inner: expected a section"),
    (["noequals"], r"not of the form key=value"),
])
def test_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, override)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
