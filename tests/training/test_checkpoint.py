"""Orbax checkpoints: sharded restore, keep-last-k, fallback from incomplete or corrupt steps."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from arpo_jax.models import make_mesh
from arpo_jax.training.checkpoint import Checkpointer, NoValidCheckpointError, abstract_like, resolve_resume


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
