"""Orbax checkpoints: sharded restore, keep-last-k, fallback from incomplete or corrupt steps, checksums."""

import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from arpo_jax.models import make_mesh
from arpo_jax.training import checksums
from arpo_jax.training.checkpoint import (Checkpointer, CorruptCheckpointError, NoValidCheckpointError, abstract_like,
                                         resolve_resume, short_cause)


def _state(step, mesh):
    w = jax.device_put(jnp.arange(32.0).reshape(8, 4) + step, NamedSharding(mesh, P("fsdp", None)))
    return {"params": {"w": w, "b": jnp.full((4,), step, jnp.bfloat16)},
            "opt_state": (jnp.int32(step), {"mu": jnp.zeros((3,)) + step}),
            "rng": jax.random.key_data(jax.random.key(step))}


def _saved(tmp_path, steps=(2, 4, 6), keep=3):
    mesh = make_mesh((1, min(4, jax.device_count()), 1))
    with Checkpointer(tmp_path / "ck", keep=keep) as ck:
        for s in steps:
            ck.save(s, _state(s, mesh), {"data_position": {"epoch": 0, "index": s}})
    return mesh


def test_restore_into_new_shardings_and_keep_last(tmp_path):
    _saved(tmp_path, steps=(1, 2, 3, 4), keep=2)
    ck = Checkpointer(tmp_path / "ck", keep=2)
    assert ck.all_steps() == [3, 4]
    mesh2 = make_mesh((1, 2, 1)) if jax.device_count() >= 2 else make_mesh((1, 1, 1))
    target = abstract_like(_state(0, make_mesh((1, 1, 1))))
    target["params"]["w"] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh2, P(None, "fsdp")))
    r = ck.restore(target)
    assert r.step == 4 and r.meta["data_position"] == {"epoch": 0, "index": 4} and r.skipped_steps == []
    assert r.state["params"]["w"].sharding == target["params"]["w"].sharding
    np.testing.assert_array_equal(np.asarray(r.state["params"]["w"]), np.arange(32.0).reshape(8, 4) + 4)
    assert r.state["params"]["b"].dtype == jnp.bfloat16 and int(r.state["opt_state"][0]) == 4
    np.testing.assert_array_equal(np.asarray(r.state["rng"]), np.asarray(jax.random.key_data(jax.random.key(4))))
    assert ck.restore(target, step=3).step == 3
    assert not ck.save(4, _state(4, mesh2))  # an existing step is left alone
    ck.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax, after a failed read
@pytest.mark.parametrize("damage", ["delete_arrays", "garbage_meta", "no_item"])
def test_corrupt_last_step_falls_back_with_a_message(tmp_path, capsys, damage):
    mesh = _saved(tmp_path)
    last = tmp_path / "ck" / "6"
    if damage == "delete_arrays":
        for root, _, files in os.walk(last / "state"):
            for f in files:
                if "ocdbt" in root or f.startswith("manifest"):
                    os.remove(os.path.join(root, f))
    elif damage == "garbage_meta":
        for root, _, files in os.walk(last / "meta"):
            for f in files:
                open(os.path.join(root, f), "w").write("{not json")
    else:
        shutil.rmtree(last / "state")
    # a write killed half-way leaves a temporary directory that is never listed
    tmp = tmp_path / "ck" / "8.orbax-checkpoint-tmp-1234"
    shutil.copytree(tmp_path / "ck" / "4", tmp)
    ck = Checkpointer(tmp_path / "ck", keep=3)
    assert 8 not in ck.all_steps()
    r = ck.restore(abstract_like(_state(0, mesh)))
    assert r.step == 4 and r.skipped_steps == [6]
    np.testing.assert_array_equal(np.asarray(r.state["params"]["w"]), np.arange(32.0).reshape(8, 4) + 4)
    err = capsys.readouterr().err
    assert "checkpoint step 6" in err and "incomplete or corrupt" in err and "falling back to step 4" in err
    assert ck.all_steps() == [2, 4]  # the unreadable step is removed so it can be written again
    assert ck.save(6, _state(6, mesh), {}, wait=True)
    ck.close()


def test_no_readable_checkpoint_and_resume_settings(tmp_path):
    mesh = _saved(tmp_path, steps=(2,))
    shutil.rmtree(tmp_path / "ck" / "2" / "state")
    ck = Checkpointer(tmp_path / "ck")
    with pytest.raises(NoValidCheckpointError, match="no checkpoint .* could be restored"):
        ck.restore(abstract_like(_state(0, mesh)))
    assert resolve_resume("auto", ck) == -1
    assert resolve_resume(2, ck) == 2
    with pytest.raises(ValueError, match="already holds checkpoint steps"):
        resolve_resume("none", ck)
    with pytest.raises(ValueError, match="no such checkpoint step"):
        resolve_resume("7", ck)
    with pytest.raises(ValueError, match="must be 'auto', 'none' or a step"):
        resolve_resume("latest", ck)
    empty = Checkpointer(tmp_path / "empty")
    assert resolve_resume("auto", empty) is None and empty.restore({}) is None


# ------------------------------------------------------------------ checksum manifests
def _kind(rel):
    """A file's kind: its path with orbax's content hashes and process numbers generalised."""
    return re.sub(r"[0-9a-f]{32}", "<hash>", re.sub(r"process_\d+", "process_<i>", rel))


def _flip(path):
    data = bytearray(path.read_bytes())
    assert data, path
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _fresh(pristine, work):
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    return Checkpointer(work, keep=3)


def test_a_flipped_byte_in_any_file_kind_falls_back_naming_the_file(tmp_path, capsys):
    mesh = _saved(tmp_path, steps=(2, 4))
    pristine, work = tmp_path / "ck", tmp_path / "work"
    kinds = {}
    for rel in checksums.list_files(pristine / "4"):
        kinds.setdefault(_kind(rel), rel)
    # what orbax 0.11-0.12 writes for a StandardSave + JsonSave step (data, array/tree metadata, commit markers)
    assert {"state/ocdbt.process_<i>/d/<hash>", "state/ocdbt.process_<i>/manifest.ocdbt", "state/manifest.ocdbt",
            "state/_METADATA", "state/array_metadatas/process_<i>", "meta/metadata",
            "_CHECKPOINT_METADATA"} <= set(kinds), sorted(kinds)
    capsys.readouterr()
    for kind, rel in sorted(kinds.items()):
        ck = _fresh(pristine, work)
        _flip(work / "4" / rel)
        r = ck.restore(abstract_like(_state(0, mesh)))
        assert (r.step, r.skipped_steps) == (2, [4]), kind
        np.testing.assert_array_equal(np.asarray(r.state["params"]["w"]), np.arange(32.0).reshape(8, 4) + 2)
        line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("checkpoint step 4"))
        assert f"({rel}: sha256 mismatch); falling back to step 2" in line, line
        ck.close()


@pytest.mark.parametrize("damage", ["extra_file", "missing_file", "manifest_flipped", "manifest_deleted",
                                    "manifest_garbage", "manifest_other_step"])
def test_manifest_damage_or_file_set_change_is_an_incomplete_step(tmp_path, capsys, damage):
    mesh = _saved(tmp_path, steps=(2, 4))
    step = tmp_path / "ck" / "4"
    data = next(rel for rel in checksums.list_files(step) if "/d/" in rel)
    manifest = step / checksums.MANIFEST
    expect = {"extra_file": "state/d/0123456789abcdef0123456789abcdef: not in the checksum manifest",
              "missing_file": f"{data}: missing", "manifest_flipped": f"{checksums.MANIFEST}: ",
              "manifest_deleted": f"{checksums.MANIFEST}: missing (never sealed)",
              "manifest_garbage": f"{checksums.MANIFEST}: unreadable (JSONDecodeError)",
              "manifest_other_step": f"{checksums.MANIFEST}: written for step 2"}[damage]
    if damage == "extra_file":
        (step / "state" / "d" / "0123456789abcdef0123456789abcdef").write_bytes(b"\0" * 64)
    elif damage == "missing_file":
        os.remove(step / data)
    elif damage == "manifest_flipped":
        _flip(manifest)
    elif damage == "manifest_deleted":
        os.remove(manifest)
    elif damage == "manifest_garbage":
        manifest.write_text("{not json")
    else:
        shutil.copy(tmp_path / "ck" / "2" / checksums.MANIFEST, manifest)
    ck = Checkpointer(tmp_path / "ck")
    with pytest.raises(CorruptCheckpointError, match="checkpoint step 4 .* is incomplete or corrupt"):
        ck.restore(abstract_like(_state(0, mesh)), step=4)  # an explicit step does not fall back
    r = ck.restore(abstract_like(_state(0, mesh)))
    assert (r.step, r.skipped_steps) == (2, [4]) and ck.all_steps() == [2]
    err = capsys.readouterr().err
    assert f"checkpoint step 4 in {ck.directory} is incomplete or corrupt ({expect}" in err, err
    assert "falling back to step 2" in err
    ck.close()


def _legacy_save(directory, steps, mesh):
    """Steps as the Checkpointer wrote them before checksums: plain orbax, no manifest, no meta flag."""
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True)) as mngr:
        for s in steps:
            mngr.save(s, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(s, mesh)),
                                                 meta=ocp.args.JsonSave({"step": s, "data_position": {}})))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax, after a failed read
def test_legacy_steps_restore_unverified_and_read_errors_are_one_clean_line(tmp_path, capsys):
    mesh = make_mesh((1, min(4, jax.device_count()), 1))
    _legacy_save(tmp_path / "ck", (2, 4), mesh)
    for root, _, files in os.walk(tmp_path / "ck" / "4" / "state"):
        for f in files:
            if os.sep + "d" in root:
                open(os.path.join(root, f), "r+b").truncate(10)
    ck = Checkpointer(tmp_path / "ck")
    r = ck.restore(abstract_like(_state(0, mesh)))
    assert (r.step, r.skipped_steps) == (2, [4])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("checkpoint step", "removed"))]
    assert len(lines) == 4, lines
    assert "checkpoint step 4" in lines[0] and "restoring it unverified" in lines[0]
    assert "checkpoint step 4" in lines[1] and "incomplete or corrupt (ValueError: " in lines[1]
    assert "falling back to step 2" in lines[1] and "tensorstore_spec" not in lines[1]
    # the cause is capped (short_cause: 240 characters); the directory's own length varies by machine
    assert len(lines[1].replace(str(tmp_path / "ck"), "DIR")) < 400, lines[1]
    assert "checkpoint step 2" in lines[2] and "restoring it unverified" in lines[2]
    ck.save(6, _state(6, mesh), {}, wait=True)  # new steps are sealed; the legacy ones stay as they are
    assert checksums.verify(ck.step_dir(6), 6) == [] and not checksums.has_manifest(ck.step_dir(2))
    ck.close()


def test_short_cause_cuts_library_dumps():
    e = ValueError('NOT_FOUND: Error opening "cast" driver: Error opening "zarr" driver: Metadata at "w/.zarray" '
                   'in OCDBT database at local file "/x/ck/6/state/" does not exist '
                   '[tensorstore_spec=\'{"context":{"cache_pool":{}}}\'] [tensorstore_spec[1]=\'{}\']\nmore')
    assert short_cause(e, "/x/ck/6") == ('ValueError: NOT_FOUND: Metadata at "w/.zarray" in OCDBT database at '
                                         'local file "state/" does not exist')
    assert short_cause(KeyError("no <orbax.Foo object at 0x7f00aa> here")) == "KeyError: no <...> here"
    assert short_cause(RuntimeError("x" * 1000)).endswith("...") and len(short_cause(RuntimeError("x" * 1000))) < 260


def test_the_seal_comes_after_the_commit_and_before_old_steps_are_deleted(tmp_path, monkeypatch):
    mesh = make_mesh((1, 1, 1))
    seen = []
    write = checksums.write_manifest

    def spy(step_dir, step):
        names = sorted(p.name for p in step_dir.parent.iterdir())
        seen.append((step, (step_dir / "commit_success.txt").exists(), names))
        return write(step_dir, step)

    monkeypatch.setattr(checksums, "write_manifest", spy)
    with Checkpointer(tmp_path / "ck", keep=1, async_save=True) as ck:
        ck.save(1, _state(1, mesh))
        ck.save(2, _state(2, mesh))
    assert [(s, committed) for s, committed, _ in seen] == [(1, True), (2, True)]
    assert seen[1][2] == ["1", "2"]  # step 1 (keep=1) is deleted only after step 2 is sealed
    assert sorted(os.listdir(tmp_path / "ck")) == ["2"] and checksums.verify(tmp_path / "ck" / "2", 2) == []
