"""Stop strings detected on device, per row, exactly, inside the decode loop.

Method. Stop strings are matched over the UTF-8 *bytes* of the generated text (UTF-8 is
self-synchronising, so a byte match is a character match). On the host we build an
Aho–Corasick automaton over bytes for all stop strings (states = trie nodes, dense
transitions [n_states, 256] with failure links folded in), then run every token's byte
string through it from every state, giving for each (state, token) the state after the token
and whether — and which — stop string completed somewhere *inside* the token's bytes. The
[n_states, V] result is compressed by grouping tokens with identical columns into classes
(almost every token behaves like "no stop byte": back to the root), so the device holds
``token_class`` [V] and two small tables [n_states, n_classes]. One decode step then costs
two gathers per row: ``cls = token_class[tok]; hit = hit_table[state, cls];
state = next_table[state, cls]``.

This is exact for stop strings that span several tokens (``</`` ``python`` ``>``), that
are glued to preceding text inside one token (``)</``) or to following text (``>\\n``): the
row stops on the token inside which the stop string completes, and that token is kept (it
was sampled; its log-prob and entropy are recorded), so the text may run past the stop
string by the rest of that token's bytes — the host can cut it. The automaton state is
reset at insert and append: stop strings match only text generated since then, never the
prompt or an observation.

Token bytes. Byte-level BPE tokenizers (Qwen2/2.5/3, Llama-3, GPT-2) map each token to its
exact bytes through the byte↔unicode table; SentencePiece-style ones (``▁`` for a space,
``<0xNN>`` byte fallback) likewise; added/special tokens use their content; any other
tokenizer falls back to ``decode([id])`` of the single token (a possible approximation for
tokenizers whose decoding is context-dependent).
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _decoder_types(tokenizer) -> set[str]:
    try:
        spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder")
    except Exception:  # not a tokenizers-backed tokenizer
        return set()
    found, todo = set(), [spec]
    while todo:
        d = todo.pop()
        if isinstance(d, dict):
            found.add(d.get("type"))
            todo.extend(d.get("decoders") or [])
    return found


def token_bytes(tokenizer) -> list[bytes]:
    """The exact byte string of every token id in ``range(len(tokenizer))``."""
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    kinds = _decoder_types(tokenizer)
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    out = []
    for i, piece in enumerate(pieces):
        if i in added:
            out.append(added[i].encode("utf-8"))
        elif piece is None:
            out.append(b"")
        elif "ByteLevel" in kinds and all(c in byte_decoder for c in piece):
            out.append(bytes(byte_decoder[c] for c in piece))
        elif "ByteFallback" in kinds and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        elif kinds & {"Metaspace", "Replace", "ByteFallback"}:
            out.append(piece.replace("▁", " ").encode("utf-8"))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out


def build_automaton(patterns: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Aho–Corasick over bytes → (delta [n_states, 256] int32, out [n_states] int32).

    ``out[s]`` is 1 + the index of a pattern that ends at state s (0 if none).
    """
    goto: list[dict[int, int]] = [{}]
    out = [0]
    for i, pat in enumerate(patterns):
        s = 0
        for b in pat:
            if b not in goto[s]:
                goto.append({})
                out.append(0)
                goto[s][b] = len(goto) - 1
            s = goto[s][b]
        out[s] = out[s] or i + 1
    n = len(goto)
    delta = np.zeros((n, 256), np.int32)
    fail = [0] * n
    queue = deque([0])
    while queue:
        s = queue.popleft()
        for b in range(256):
            t = goto[s].get(b)
            if t is None:
                delta[s, b] = delta[fail[s], b] if s else 0
            else:
                fail[t] = delta[fail[s], b] if s else 0
                out[t] = out[t] or out[fail[t]]
                delta[s, b] = t
                queue.append(t)
    return delta, np.asarray(out, np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StopTables:
    """Device tables: token_class [V] int32; next_state, hit [n_states, n_classes] int32."""

    token_class: jax.Array
    next_state: jax.Array
    hit: jax.Array


def build_stop_tables(stop_strings: Sequence[str], tok_bytes: Sequence[bytes], vocab_size: int) -> StopTables:
    """Per-(state, token) transitions for ``stop_strings`` over the tokens' bytes.

    tok_bytes: byte string of each token id (``token_bytes(tokenizer)``); ids in
    ``[len(tok_bytes), vocab_size)`` (embedding padding) behave as empty tokens.
    """
    delta, out = build_automaton([s.encode("utf-8") for s in stop_strings])
    n_states = delta.shape[0]
    lens = np.zeros(vocab_size, np.int64)
    lens[: len(tok_bytes)] = [len(b) for b in tok_bytes[:vocab_size]]
    width = int(lens.max()) if vocab_size else 0
    mat = np.zeros((vocab_size, max(width, 1)), np.uint8)  # [V, Lmax] bytes
    for i, b in enumerate(tok_bytes[:vocab_size]):
        mat[i, : len(b)] = np.frombuffer(b, np.uint8)
    state = np.repeat(np.arange(n_states, dtype=np.int32)[:, None], vocab_size, axis=1)  # [n, V]
    hit = np.zeros((n_states, vocab_size), np.int32)
    for j in range(width):
        cols = np.nonzero(lens > j)[0]
        nxt = delta[state[:, cols], mat[cols, j][None, :]]
        state[:, cols] = nxt
        h = hit[:, cols]
        hit[:, cols] = np.where(h == 0, out[nxt], h)
    columns = np.concatenate([state, hit], axis=0).T  # [V, 2n]: a token's behaviour
    classes, token_class = np.unique(columns, axis=0, return_inverse=True)
    return StopTables(token_class=jnp.asarray(token_class.reshape(-1), jnp.int32),
                      next_state=jnp.asarray(classes[:, :n_states].T, jnp.int32),
                      hit=jnp.asarray(classes[:, n_states:].T, jnp.int32))


def stop_step(state: jax.Array, tokens: jax.Array, tables: StopTables) -> tuple[jax.Array, jax.Array]:
    """Advances the automaton of each row by one token.

    state, tokens: int32 [B]. Returns (new state [B], hit [B]: 0, or 1 + stop string index).
    """
    cls = tables.token_class[tokens]
    return tables.next_state[state, cls], tables.hit[state, cls]
