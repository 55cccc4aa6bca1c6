"""A seeded synthetic task family whose answers need the tools (the demo's data).

Three kinds of question, each a ``data_source`` of its own:

* ``arith``: ``a*b`` with a 4-digit ``a`` and a 3-digit ``b`` (a 7-digit product) -> the Python tool;
* ``fact``: where a generated fictional person was born, found only through the
  search tool over a generated corpus (one JSONL document per person, BM25 backend);
* ``multihop``: a birth year found by search, multiplied by a 3-digit number -> search, then Python.

Every name, number and document has a fixed shape: a person is "First Last" with two
two-syllable words, a city one two-syllable word, years and operands a fixed number of
digits, and every document the same template. With the demo's tokenizer (one token per
syllable and per digit) whatever the agent must copy (a name into a query, operands into
code, a result into the answer) sits at a fixed distance from where it is written, so a
model trained from scratch in a few minutes on a CPU learns to copy; what it still has to
learn is *whether* to call a tool, which is what RL improves.

The train and held-out splits use disjoint people, disjoint cities and disjoint operand
pools (every number an arithmetic or multi-hop question contains belongs to one split only),
so held-out accuracy measures tool use, not memorisation. Everything is a pure function of
the seed. Prompt files are read by ``arpo_jax.data.eval_jsonl.read_eval_jsonl`` (fields
``id``, ``question``, ``answer`` = list of strings, plus ``kind`` kept in ``meta``); the
file stem is the ``data_source``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

SYSTEM_PROMPT = "Use tools."
"""The demo's compact system prompt (the chat template's default system message too)."""

KINDS = ("arith", "fact", "multihop")
SPLITS = ("train", "heldout")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


@dataclasses.dataclass(frozen=True)
class Person:
    """A fictional person: a unique two-word name, a birth city and a birth year."""

    name: str
    city: str
    born: int


@dataclasses.dataclass(frozen=True)
class City:
    """A fictional city (a birthplace)."""

    name: str


@dataclasses.dataclass(frozen=True)
class World:
    """All entities of both splits, and each split's operand pools (disjoint across splits)."""

    people: dict[str, list[Person]]
    cities: dict[str, list[City]]
    operands: dict[str, dict[str, list[int]]]  # split -> {"a", "b", "c", "k"} -> numbers (disjoint splits)


@dataclasses.dataclass(frozen=True)
class Task:
    """One question with its gold answer and the tool calls that solve it.

    ``calls`` are the (tool, body) pairs of the shortest solution, in order; the gold answer
    is in the result of the last one. ``entity`` is the person or city a question is about.
    """

    id: str
    kind: str
    question: str
    answer: str
    calls: tuple[tuple[str, str], ...]
    entity: str = ""


def syllables() -> list[str]:
    """Every syllable a generated name can contain, capitalised and not."""
    lower = [o + v for o in _ONSETS for v in _VOWELS]
    return lower + [x.capitalize() for x in lower]


def _word(rng: random.Random) -> str:
    """A capitalised two-syllable word (consonant onset + vowel group, twice): two tokens."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2)).capitalize()


def _unique_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = _word(rng)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _number_split(rng: random.Random, lo: int, hi: int, heldout_share: float) -> dict[str, set[int]]:
    pool = list(range(lo, hi + 1))
    rng.shuffle(pool)
    cut = int(len(pool) * heldout_share)
    return {"heldout": set(pool[:cut]), "train": set(pool[cut:])}


def build_world(seed: int = 0, people: tuple[int, int] = (2400, 300),
                cities: tuple[int, int] = (1500, 300), heldout_share: float = 0.25) -> World:
    """Generates the entities and operand pools; ``people``/``cities`` are (train, held-out) counts.

    City names, first names and last names are three disjoint word sets, so a search for a
    person never matches a city. There are many more cities than syllables, so a city's first
    syllable does not tell its second: the traces reward copying the whole name from the search
    result (with 120 train cities the model completed the first syllable from memory, and
    held-out cities, disjoint from the train ones, came out wrong). A person's birth city is
    from the same split. Many people share a first or a last name (BM25 ranks the person
    matching both first), and there are enough people that SFT traces rarely repeat a fact: the
    cold-start model must learn to copy from the tool result rather than memorise answers.
    """
    rng = random.Random(f"arpo-demo-world-{seed}")
    taken: set[str] = set()
    city_names = _unique_words(rng, sum(cities), taken)
    firsts = _unique_words(rng, 120, taken)
    lasts = _unique_words(rng, 120, taken)
    all_cities = [City(n) for n in city_names]
    split_cities = {"train": all_cities[: cities[0]], "heldout": all_cities[cities[0]:]}
    names = [f"{f} {l}" for f in firsts for l in lasts]
    rng.shuffle(names)
    split_people: dict[str, list[Person]] = {}
    start = 0
    for split, n in zip(SPLITS, people):
        split_people[split] = [Person(name, rng.choice(split_cities[split]).name,
                                      rng.randint(1700, 1999)) for name in names[start:start + n]]
        start += n
    numbers = _number_split(rng, 60, 9999, heldout_share)  # one partition: no number is in both splits
    # a*b and year*k both have 7 digits: copying a Python result into the answer is one skill
    # for both kinds (with a 2-digit k, a 6-digit copy learnt from multi-hop traces alone failed)
    ranges = {"a": (2000, 9999), "b": (500, 999), "k": (600, 999)}
    operands = {s: {key: [n for n in range(lo, hi + 1) if n in numbers[s]] for key, (lo, hi) in ranges.items()}
                for s in SPLITS}
    return World(split_people, split_cities, operands)


def corpus_docs(world: World) -> list[dict]:
    """One ``{"id", "title", "text"}`` document per person (both splits)."""
    return [{"id": f"p{i}", "title": p.name, "text": f"born in {p.city} in {p.born}."}
            for i, p in enumerate(p for split in SPLITS for p in world.people[split])]


def _arith(rng: random.Random, ops: dict[str, list[int]]) -> tuple[str, str, tuple]:
    a, b = rng.choice(ops["a"]), rng.choice(ops["b"])
    expr = f"{a}*{b}"
    return f"What is {expr}?", str(a * b), (("python", f"print({expr})"),)


def _fact(rng: random.Random, people: list[Person]) -> tuple[str, str, tuple, str]:
    p = rng.choice(people)
    return f"Where was {p.name} born?", p.city, (("search", p.name),), p.name


def _multihop(rng: random.Random, people: list[Person], ks: list[int]) -> tuple:
    k, p = rng.choice(ks), rng.choice(people)
    q = f"Multiply by {k}: when was {p.name} born?"
    return q, str(p.born * k), (("search", p.name), ("python", f"print({p.born}*{k})")), p.name


def make_tasks(world: World, split: str, n: int, seed: int = 0,
               mix: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)) -> list[Task]:
    """``n`` distinct questions of ``split``; ``mix`` = shares of (arith, fact, multihop)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"arpo-demo-tasks-{seed}-{split}")
    people, ops = world.people[split], world.operands[split]
    counts = [int(round(n * m)) for m in mix]
    counts[0] += n - sum(counts)
    tasks: list[Task] = []
    seen: set[str] = set()
    for kind, count in zip(KINDS, counts):
        made, tries = 0, 0
        while made < count:
            tries += 1
            if kind == "arith":
                q, ans, calls = _arith(rng, ops)
                entity = ""
            elif kind == "fact":
                q, ans, calls, entity = _fact(rng, people)
            else:
                q, ans, calls, entity = _multihop(rng, people, ops["k"])
            if q in seen and tries < 50 * count:  # repeats allowed only once the pool is exhausted
                continue
            seen.add(q)
            tasks.append(Task(f"{split}-{kind}-{made}", kind, q, ans, calls, entity))
            made += 1
    random.Random(f"arpo-demo-order-{seed}-{split}").shuffle(tasks)
    return tasks


def prompt_row(task: Task) -> dict:
    """The JSONL row of a prompt file (``read_eval_jsonl`` fields)."""
    return {"id": task.id, "question": task.question, "answer": [task.answer], "kind": task.kind}


def write_prompt_files(tasks: list[Task], out_dir: str | Path) -> dict[str, str]:
    """Writes ``<out_dir>/<kind>.jsonl`` per kind (the stem is the ``data_source``); kind -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in KINDS:
        rows = [prompt_row(t) for t in tasks if t.kind == kind]
        if not rows:
            continue
        path = out_dir / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[kind] = str(path)
    return paths


def write_corpus(world: World, path: str | Path) -> str:
    """Writes the search corpus JSONL (``SearchConfig(backend="bm25", corpus_path=path)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in corpus_docs(world)), encoding="utf-8")
    return str(path)


def prompt_messages(question: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """``[system, user]`` messages of a question (what the SFT traces and the rollout render)."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": question}]
