"""Stop strings: token bytes, the on-device automaton vs brute force, and the sampler stopping
on stop strings split over several tokens or glued to neighbouring text (hand-made tokenizer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.models import ModelConfig, create_model
from arpo_jax.sampling import BUDGET, EOS, STOP_STRING, Sampler, SamplingConfig, build_stop_tables, token_bytes
from arpo_jax.sampling.stops import build_automaton, stop_step
from tests.sampling.tiny_tokenizer import EOS as EOS_TEXT, build_tokenizer, ids_of

STOPS = ("</python>", "</search>", "</answer>", "on</", "hohoho")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tbytes(tok):
    return token_bytes(tok)


def test_tokenizer_splits_and_glues_stop_strings(tok):
    assert len(tok.encode("</python>")) == 3  # "</" "python" ">"
    pieces = [tok.decode([i]) for i in tok.encode("print(1)</python>\n<result>")]
    assert ")</" in pieces and ">\n" in pieces  # glued to preceding and following text


def test_token_bytes_concatenate_to_decoded_text(tok, tbytes):
    rng = np.random.default_rng(0)
    normal = [i for i in range(len(tok)) if i != tok.eos_token_id]
    for _ in range(50):
        ids = rng.choice(normal, 12).tolist()
        text = tok.decode(ids)
        if "\ufffd" in text:  # a split multi-byte character: decode is lossy, bytes are not
            continue
        assert b"".join(tbytes[i] for i in ids) == text.encode("utf-8")
    assert tbytes[tok.eos_token_id] == EOS_TEXT.encode()


def test_automaton_finds_overlapping_patterns():
    delta, out = build_automaton([b"abab", b"bac", b"b"])
    s, hits = 0, []
    for ch in b"xabac":
        s = delta[s, ch]
        hits.append(int(out[s]))
    assert hits == [0, 0, 3, 0, 2]  # "b" at index 2, "bac" at index 4


def _first_stop(seq, tbytes, stops):
    for i in range(len(seq)):
        text = b"".join(tbytes[t] for t in seq[: i + 1])
        ends = {j: text.find(s.encode()) + len(s) for j, s in enumerate(stops) if s.encode() in text}
        if ends:
            return i, ends
    return -1, {}


def test_device_automaton_matches_brute_force(tok, tbytes):
    vocab = len(tok) + 11  # model vocab larger than the tokenizer's (padding ids are empty tokens)
    tables = build_stop_tables(STOPS, tbytes, vocab)
    assert tables.token_class.shape == (vocab,)
    pool = ids_of(tok, [")</", "</", "python", "py", "thon", ">\n", "search", "</se", "arch>", "</pyth", "on",
                        "answer", "ans", "wer>", "ok", "<", "/", ">", "p", "h", "o", "n", "a", "\n"])
    rng = np.random.default_rng(1)
    seqs = np.asarray([rng.choice(pool, 24) for _ in range(300)], np.int32)  # [N, T]

    @jax.jit
    def run(seqs):
        def step(state, tokens):
            state, hit = stop_step(state, tokens, tables)
            return state, hit

        _, hits = jax.lax.scan(step, jnp.zeros(seqs.shape[0], jnp.int32), seqs.T)
        return hits.T  # [N, T]

    hits = np.asarray(run(jnp.asarray(seqs)))
    n_found = 0
    for seq, h in zip(seqs.tolist(), hits):
        i, ends = _first_stop(seq, tbytes, STOPS)
        got = int(np.argmax(h > 0)) if (h > 0).any() else -1
        assert got == i, (seq, i, got)
        if i >= 0:
            n_found += 1
            assert h[i] - 1 in ends and ends[h[i] - 1] == min(ends.values())
    assert n_found > 30  # the pool makes stops frequent


# ---------------------------------------------------------------- sampler integration
def _bigram_model(tok, scripts, vocab):
    """A transformer whose greedy next token depends only on the current token: the attention
    and MLP outputs are zeroed, so the residual stream is the token embedding, and the
    lm_head maps each scripted token to its successor."""
    cfg = ModelConfig(family="qwen2", vocab_size=vocab, hidden_size=64, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False)
    model = create_model(cfg, seed=0)
    for layer in model.layers:
        layer.attn.o_proj[...] = jnp.zeros_like(layer.attn.o_proj[...])
        layer.mlp.down_proj[...] = jnp.zeros_like(layer.mlp.down_proj[...])
    emb = np.random.default_rng(0).standard_normal((vocab, 64)).astype(np.float32)
    x = emb / np.sqrt((emb**2).mean(-1, keepdims=True) + 1e-6)  # what the final RMSNorm outputs
    head = np.zeros((64, vocab), np.float32)
    succ = {}
    for script in scripts:
        for a, b in zip(script, script[1:]):
            assert succ.setdefault(a, b) == b, "scripts must not disagree on a successor"
            head[:, b] += 20 * x[a] / (x[a] @ x[a])
    model.embed[...] = jnp.asarray(emb)
    model.lm_head[...] = jnp.asarray(head)
    return model


def test_sampler_stops_on_split_and_glued_stop_strings(tok, tbytes):
    rows = {  # prompt token, then the greedy continuation the bigram model is built to produce
        "glued": ["ok", "x=1", ")</", "python", ">\n", "hello"],
        "split": ["a", "</", "py", "thon", ">", "world"],
        "search": ["b", "</se", "arch>", "c"],
        "eos": ["d", "e", "f", EOS_TEXT],
        "near_miss": ["g", "</pyth", "on", "]", "h", "i", "j", "k", "l", "m"],
    }
    scripts = {k: ids_of(tok, v) for k, v in rows.items()}
    vocab = len(tok) + 11
    model = _bigram_model(tok, list(scripts.values()), vocab)
    cfg = SamplingConfig(greedy=True, max_new_tokens=7, chunk_size=4, stop_strings=("</python>", "</search>"),
                         eos_ids=(tok.eos_token_id,), vocab_size=len(tok))
    sampler = Sampler(model, cfg, num_slots=8, capacity=32, tokenizer=tok)
    out = dict(zip(scripts, sampler.generate([s[:1] for s in scripts.values()])))
    assert out["glued"]["tokens"].tolist() == scripts["glued"][1:5]  # stops inside ">\n"
    assert (out["glued"]["status"], out["glued"]["stop_index"]) == (STOP_STRING, 0)
    assert out["split"]["tokens"].tolist() == scripts["split"][1:5]
    assert (out["split"]["status"], out["split"]["stop_index"]) == (STOP_STRING, 0)
    assert out["search"]["tokens"].tolist() == scripts["search"][1:3]
    assert (out["search"]["status"], out["search"]["stop_index"]) == (STOP_STRING, 1)
    assert out["eos"]["tokens"].tolist() == scripts["eos"][1:] and out["eos"]["status"] == EOS
    assert out["near_miss"]["tokens"].tolist() == scripts["near_miss"][1:8]  # "</python]" is no stop
    assert out["near_miss"]["status"] == BUDGET
    for o in out.values():  # greedy log-probs are under the T=1 distribution, and finite
        assert np.all(np.isfinite(o["logprobs"])) and np.all(o["logprobs"] <= 0)

    # Matching covers generated text only: a stop begun in an observation or the prompt and
    # finished by the model does not count; one begun and finished by the model does.
    sampler.insert([0], [ids_of(tok, ["g"])], budgets=[10])
    r = sampler.decode_chunk()
    assert r.new_tokens(0)[0].tolist() == ids_of(tok, ["</pyth", "on", "]", "h"])
    sampler.append([0], [ids_of(tok, ["a", "</", "py"])])  # budget 10 - 4 - 3 = 3
    r = sampler.decode_chunk()
    assert r.new_tokens(0)[0].tolist() == ids_of(tok, ["thon", ">", "world"]) and r.status[0] == BUDGET
    sampler.release([0])
    sampler.insert([0, 1], [ids_of(tok, ["a", "</", "py"]), ids_of(tok, ["a"])], budgets=[3, 5])
    r = sampler.decode_chunk()
    assert r.new_tokens(0)[0].tolist() == ids_of(tok, ["thon", ">", "world"]) and r.status[0] == BUDGET
    assert r.new_tokens(1)[0].tolist() == ids_of(tok, ["</", "py", "thon", ">"]) and r.status[1] == STOP_STRING
