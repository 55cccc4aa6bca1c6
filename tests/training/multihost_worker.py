"""One process of the jax.distributed tests (run by test_multihost.py, one CPU device each:
CPU collectives with several devices per process are not reliable, openxla/xla#16430).

``multihost_worker.py update OUT``: two sharded policy updates on a fixed batch.
``multihost_worker.py rl OUT CONFIG``: ``arpo-jax train`` on CONFIG; every process writes
``OUT.<process>`` with the summary and the prompts its rollout engine was given.
``multihost_worker.py copy OUT``: ``local_copy`` of a tensor-parallel model onto this process's
devices; writes ``OUT.<process>`` with the local mesh, the shard shapes and the values' check.
``multihost_worker.py ckpt OUT DIR``: two asynchronous checkpoint saves of arrays split over
the processes, one flipped byte in a file process 1 wrote, a restore with fallback; writes
``OUT.<process>`` with what each process saw and restored.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"

import jax  # noqa: E402
import jax.experimental.multihost_utils  # noqa: E402,F401
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from arpo_jax.models import create_model, get_preset, make_mesh  # noqa: E402
from arpo_jax.training.distributed import global_batch, initialize_from_env, process_rows  # noqa: E402
from arpo_jax.training.update import OptimizerConfig, PolicyUpdater, cached_optimizer, make_policy_batch  # noqa: E402

CFG = get_preset("qwen3-0.6b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=8)


def fixed_batch(b=4, t=10):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (b, t)).astype(np.int32)
    attn = np.ones((b, t), np.int32)
    loss_mask = np.ones((b, t), np.float32)
    loss_mask[:, :3] = 0
    old_lp = -np.abs(rng.normal(size=(b, t))).astype(np.float32) * loss_mask
    adv = (np.repeat(rng.normal(size=(b, 1)), t, 1) * loss_mask).astype(np.float32)
    return dict(tokens=tokens, attention_mask=attn, loss_mask=loss_mask, old_logprobs=old_lp, advantages=adv)


def update_steps(out_path):
    distributed = initialize_from_env()
    mesh = make_mesh((-1, 1, 1))
    model = create_model(CFG, seed=0, mesh=mesh)
    full = fixed_batch()
    rows = process_rows(4)
    local = {k: v[rows] for k, v in full.items()}
    with jax.set_mesh(mesh):
        arrays = global_batch(local, NamedSharding(mesh, P(("data", "fsdp"))))
        graphdef, params = nnx.split(model)
        updater = PolicyUpdater(graphdef, cached_optimizer(OptimizerConfig(lr=1e-3, weight_decay=0.0)))
        opt_state, losses = updater.init(params), []
        for _ in range(2):
            params, opt_state, m = updater.apply(params, opt_state, make_policy_batch(**arrays))
            losses.append(float(m["loss"]))
    embed = np.asarray(jax.experimental.multihost_utils.process_allgather(params["embed"][...], tiled=True))
    if jax.process_index() == 0:
        with open(out_path, "w") as f:
            json.dump({"losses": losses, "embed_sum": float(np.abs(embed).sum()), "processes": jax.process_count(),
                       "devices": jax.device_count(), "distributed": distributed}, f)


def rl_run(out_path, config_path):
    from arpo_jax.config import load_config
    from arpo_jax.rollout import RolloutEngine
    from arpo_jax.training import rl
    from arpo_jax.training import update as update_module
    from arpo_jax.training.rl_config import RLConfig

    initialize_from_env()
    calls = []
    engines, held = [], []
    run = RolloutEngine.run

    def recording_run(self, prompts, **kw):  # what this process's engine rolled out
        calls.append({"prompts": len(prompts), "offset": kw.get("prompt_offset", 0), "slots": self.num_slots})
        engines.append(self)
        return run(self, prompts, **kw)

    update = update_module.update  # what the RL loop's PolicyUpdater.apply calls

    def recording_update(*a, **kw):  # does a rollout engine still hold weights during the update?
        held.append(any(e.sampler.params is not None for e in engines))
        return update(*a, **kw)

    RolloutEngine.run, update_module.update = recording_run, recording_update
    summary = rl.run_train(load_config(RLConfig, config_path))
    with open(f"{out_path}.{jax.process_index()}", "w") as f:
        json.dump({"summary": summary, "calls": calls, "processes": jax.process_count(),
                   "devices": jax.device_count(), "weights_held_in_update": held}, f, default=str)


def copy_run(out_path):
    """Global mesh tensor=2 over 2 processes of 1 device: each process's rollout copy is whole on
    its device and holds exactly the global values; a copy stored in the compute dtype (bf16,
    fp32 master weights) gives the same logits as the fp32 copy."""
    import jax.numpy as jnp
    from flax import nnx

    from arpo_jax.training.distributed import local_copy, local_mesh

    initialize_from_env()
    mesh = make_mesh((1, 1, -1))
    cfg = CFG.replace(param_dtype="float32", dtype="bfloat16")
    graphdef, params = nnx.split(create_model(cfg, seed=3, mesh=mesh))
    local = local_mesh(mesh)
    copy = local_copy(params, local)
    half = local_copy(params, local, jnp.bfloat16)
    q_global = np.asarray(jax.experimental.multihost_utils.process_allgather(params["layers"][0]["attn"]["q_proj"][...],
                                                                            tiled=True))
    q_local = copy["layers"][0]["attn"]["q_proj"][...]
    same = all(np.array_equal(np.asarray(a.data), q_global[a.index]) for a in q_local.addressable_shards)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)), jnp.int32)
    with jax.set_mesh(local):
        logits = [np.asarray(nnx.merge(graphdef, c)(tokens)) for c in (copy, half)]
    nbytes = [sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(c)) for c in (copy, half)]
    with open(f"{out_path}.{jax.process_index()}", "w") as f:
        json.dump({"global_mesh": dict(mesh.shape), "local_mesh": dict(local.shape),
                   "local_devices": sorted(d.id for d in local.devices.flat),
                   "q_shard": list(q_local.addressable_shards[0].data.shape), "q_global": list(q_global.shape),
                   "fully_addressable": bool(q_local.is_fully_addressable), "same_values": bool(same),
                   "half_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(half)}), "bytes": nbytes,
                   "same_logits": bool(np.array_equal(logits[0], logits[1])),
                   "logits_finite": bool(np.isfinite(logits[0]).all())}, f)


def ckpt_run(out_path, directory):
    """Process 0 seals each step (after both processes wrote their files); every process hashes its
    share on restore and all fall back to the same step when a byte of process 1's data flips."""
    import contextlib
    import io
    from pathlib import Path

    from jax.experimental import multihost_utils

    from arpo_jax.training import checksums
    from arpo_jax.training.checkpoint import Checkpointer, abstract_like

    initialize_from_env()
    mesh = make_mesh((1, -1, 1))
    sharding = NamedSharding(mesh, P("fsdp", None))

    def state(step):
        w = np.arange(32.0, dtype=np.float32).reshape(8, 4) + step
        return {"w": jax.make_array_from_callback((8, 4), sharding, lambda idx: w[idx]),
                "b": jax.device_put(np.full((4,), step, np.float32), NamedSharding(mesh, P()))}

    with Checkpointer(directory, keep=3, async_save=True) as ck:
        for step in (1, 2):
            ck.save(step, state(step), {"data_position": {"index": step}})
    multihost_utils.sync_global_devices("saved")
    step2 = Path(directory) / "2"
    written = sorted(checksums.list_files(step2))
    if jax.process_index() == 0:
        victim = next(rel for rel in written if rel.startswith("state/ocdbt.process_1/d/"))
        data = bytearray((step2 / victim).read_bytes())
        data[len(data) // 2] ^= 1
        (step2 / victim).write_bytes(bytes(data))
    multihost_utils.sync_global_devices("flipped")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ck = Checkpointer(directory, keep=3)
        r = ck.restore(abstract_like(state(0)))
        ck.close()
    w = np.asarray(multihost_utils.process_allgather(r.state["w"], tiled=True))
    with open(f"{out_path}.{jax.process_index()}", "w") as f:
        json.dump({"files": written, "restored": r.step, "skipped": r.skipped_steps,
                   "values_ok": bool(np.array_equal(w, np.arange(32.0).reshape(8, 4) + 1)),
                   "messages": [x for x in err.getvalue().splitlines() if x.startswith("checkpoint step")]}, f)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "update":
        update_steps(out)
    elif mode == "copy":
        copy_run(out)
    elif mode == "ckpt":
        ckpt_run(out, sys.argv[3])
    else:
        rl_run(out, sys.argv[3])
