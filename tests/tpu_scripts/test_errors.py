"""The scripts fail early, before printing or running any command, with a message that names
the problem: a missing argument, an unknown accelerator generation, no gcloud, ..."""

from __future__ import annotations

import pytest

from tests.tpu_scripts.helpers import run_script

BASE = ["--name", "n", "--zone", "z"]


def _fails(r, *needles: str) -> None:
    assert r.returncode != 0
    assert r.commands == [], "nothing may be printed or run before the error"
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


EXTRA_ARGS = {
    "create.sh": ["--accelerator-type", "v5p-8"],
    "install.sh": ["--src", "."],
    "data.sh": ["--data", "gs://b/d"],
    "launch.sh": ["--config", "c.yaml"],
    "logs.sh": [],
    "delete.sh": [],
    "run_all.sh": ["--accelerator-type", "v5p-8", "--src", ".", "--config", "c.yaml"],
}


@pytest.mark.parametrize("script", sorted(EXTRA_ARGS))
def test_missing_zone_is_named(dry, script):
    _fails(dry(script, "--name", "n", *EXTRA_ARGS[script]), "missing required argument --zone")


@pytest.mark.parametrize("script", sorted(EXTRA_ARGS))
def test_no_gcloud_without_dry_run(no_gcloud_path, script):
    r = run_script(script, *BASE, *EXTRA_ARGS[script], path=no_gcloud_path)
    _fails(r, "gcloud", "Google Cloud CLI", "https://cloud.google.com/sdk/docs/install", "--dry-run")


def test_missing_name_and_accelerator(dry):
    _fails(dry("delete.sh", "--zone", "z"), "missing required argument --name")
    _fails(dry("create.sh", *BASE), "missing required argument --accelerator-type")
    _fails(dry("run_all.sh", *BASE, "--src", ".", "--config", "c.yaml"), "--accelerator-type")


@pytest.mark.parametrize("accelerator", ["v9-8", "v3-8", "tpu-8", "v5p", "v5p-x", "v6e-"])
def test_unknown_accelerator(dry, accelerator):
    _fails(dry("create.sh", *BASE, "--accelerator-type", accelerator), f"unknown accelerator type '{accelerator}'")


def test_unknown_accelerator_lists_the_supported_ones(dry):
    r = dry("create.sh", *BASE, "--accelerator-type", "v9-8")
    _fails(r, "v4", "v5litepod-N", "v5p-N", "v6e-N")
    _fails(dry("create.sh", *BASE, "--accelerator-type", "v5e-64"), "v5litepod-64")


def test_argument_errors(dry):
    _fails(dry("create.sh", *BASE, "--accelerator-type", "v5p-8", "--spot", "--reserved"), "--spot and --reserved")
    _fails(dry("create.sh", *BASE, "--accelerator-type", "v5p-8", "--bogus"), "unknown option --bogus")
    _fails(dry("delete.sh", *BASE, "--config", "c.yaml"), "unknown option --config")
    _fails(dry("create.sh", *BASE, "--zone"), "option --zone needs a value")
    _fails(dry("create.sh", "--name", "--zone", "z"), "option --name needs a value")
    _fails(dry("delete.sh", *BASE, "extra"), "unexpected argument 'extra'")
    _fails(dry("install.sh", *BASE), "--repo-url URL or --src DIR")
    _fails(dry("install.sh", *BASE, "--src", ".", "--repo-url", "u"), "exclude each other")
    _fails(dry("install.sh", *BASE, "--src", "/nonexistent"), "not an arpo_jax checkout")
    _fails(dry("data.sh", *BASE), "missing required argument --data")
    _fails(dry("launch.sh", *BASE), "missing required argument --config")
    _fails(dry("launch.sh", *BASE, "c.yaml", "d.yaml"), "unexpected argument 'd.yaml'")
    _fails(dry("launch.sh", *BASE, "c.yaml", "--env", "1X=2"), "--env expects KEY=VALUE")
    _fails(dry("launch.sh", *BASE, "c.yaml", "--env", "A-B=2"), "not a valid variable name")
    _fails(dry("launch.sh", *BASE, "c.yaml", "=x"), "not a key=value config override")
    _fails(dry("launch.sh", *BASE, "c.yaml", "a b=x"), "not a key=value config override")
    for mesh in ["1,8", "1,0,1", "a,b,c", "1,-2,1", "1,,1"]:
        _fails(dry("launch.sh", *BASE, "c.yaml", "--mesh", mesh), "--mesh")
    _fails(dry("logs.sh", *BASE, "--lines", "many"), "--lines expects a number")
    _fails(dry("logs.sh", *BASE, "--collect", "d", "--worker", "0,1"), "one worker number")
