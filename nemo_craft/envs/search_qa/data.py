"""Search-QA data: a seeded synthetic multi-hop set with its corpus, or user JSONL files.

Formats (those of Search-R1, so real data drops in):
  corpus JSONL: {"id": str, "contents": "\"Title\"\\ntext"}
  QA JSONL:     {"id": str, "question": str, "golden_answers": [str, ...],
                 optional "supporting_ids": [corpus ids], "hops": [search queries]}

The synthetic world has people, organisations and cities. Each has one passage stating its facts;
questions need one or two hops ("Who was the mentor of the founder of Vexlora Labs?" needs the
organisation's passage for the founder, then the founder's passage for the mentor). Same seed and
sizes => byte-identical corpus and questions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path

_FIRST = (
    "Ada Bram Cora Dane Edda Finn Gala Hugo Iris Joss Kira Lev Mira Nico Oona Pell Quin Rhea "
    "Sven Tova Ugo Vera Wren Xan Yara Zeno Alba Bento Cleo Dario Elin Faro Greta Hale Ines "
    "Juno Kato Lupe Mato Nell"
).split()
_LAST = (
    "Arden Brisk Calloway Dunmore Everly Fenwick Garrow Holloway Ingram Jessup Kestrel Lomax "
    "Marlow Norcross Oakley Pembrook Quarry Ravel Stroud Thorne Underhill Vance Whitlock Yardley "
    "Zeller Ashby Birch Corwin Delacroix Ellery Frost Gale Hatherly Irving Jarrow"
).split()
_SYLL = "ka lo ve ra tin mo sul dra pex qui zor an bel cor dim fen gar hul ix jun lum nor".split()
_ORG_KIND = "Labs Works Institute Foundry Collective Systems Guild Observatory Press Studio".split()
_FIELDS = ("optics chemistry astronomy botany cartography linguistics metallurgy acoustics geology robotics").split()


def _coined(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLL) for _ in range(parts)).capitalize()


@dataclasses.dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    golden_answers: tuple[str, ...]
    supporting_ids: tuple[str, ...] = ()
    hops: tuple[str, ...] = ()
    """Search queries that retrieve the supporting passages in order (the expert's searches)."""


@dataclasses.dataclass(frozen=True)
class QADataset:
    corpus: tuple[dict, ...]
    train: tuple[QAItem, ...]
    test: tuple[QAItem, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {doc["id"]: doc for doc in self.corpus})

    def passage(self, doc_id: str) -> dict:
        return self._by_id[doc_id]

    def write(self, directory: str | Path) -> Path:
        """Write corpus.jsonl, train.jsonl and test.jsonl (for the retrieval server, or to look)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out / "corpus.jsonl", self.corpus)
        for split in ("train", "test"):
            _write_jsonl(out / f"{split}.jsonl", [dataclasses.asdict(q) for q in getattr(self, split)])
        return out


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def _unique_names(rng: random.Random, n: int, make) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = make()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


@functools.lru_cache(maxsize=4)
def synthetic_dataset(
    seed: int = 0,
    num_people: int = 600,
    num_orgs: int = 200,
    num_cities: int = 60,
    test_fraction: float = 0.2,
) -> QADataset:
    """The synthetic multi-hop QA set and its corpus (a few hundred KB at the defaults)."""
    rng = random.Random(f"search_qa:{seed}")
    people = _unique_names(rng, num_people, lambda: f"{rng.choice(_FIRST)} {rng.choice(_LAST)}")
    cities = _unique_names(rng, num_cities, lambda: _coined(rng, 2) + rng.choice(["", "ton", "ford", "mere"]))
    orgs = _unique_names(rng, num_orgs, lambda: f"{_coined(rng, 3)} {rng.choice(_ORG_KIND)}")
    born = {p: rng.choice(cities) for p in people}
    field = {p: rng.choice(_FIELDS) for p in people}
    mentor = {p: rng.choice([q for q in rng.sample(people, 3) if q != p]) for p in people}
    founder = {o: rng.choice(people) for o in orgs}
    hq = {o: rng.choice(cities) for o in orgs}
    year = {o: rng.randrange(1850, 2020) for o in orgs}
    river = {c: f"{_coined(rng, 2)} River" for c in cities}

    corpus = []
    for p in people:
        corpus.append(
            {
                "id": f"person:{p}",
                "contents": (
                    f'"{p}"\n{p} is a researcher in {field[p]}, born in {born[p]}. '
                    f"{p} trained under "
                    f"{mentor[p]}, who was {p}'s mentor."
                ),
            }
        )
    for o in orgs:
        corpus.append(
            {
                "id": f"org:{o}",
                "contents": (
                    f'"{o}"\n{o} was founded in {year[o]} by its founder, {founder[o]}. '
                    "Its headquarters are in "
                    f"{hq[o]}."
                ),
            }
        )
    for c in cities:
        corpus.append({"id": f"city:{c}", "contents": f'"{c}"\n{c} is a city on the {river[c]}.'})

    def questions(o: str) -> list[tuple[str, str, list[str], list[str]]]:
        f, city = founder[o], hq[o]
        return [
            (f"Who founded {o}?", f, [f"org:{o}"], [f"{o} founder"]),
            (
                f"Who was the mentor of the founder of {o}?",
                mentor[f],
                [f"org:{o}", f"person:{f}"],
                [f"{o} founder", f"{f} mentor"],
            ),
            (
                f"In which city was the founder of {o} born?",
                born[f],
                [f"org:{o}", f"person:{f}"],
                [f"{o} founder", f"{f} born"],
            ),
            (
                f"On which river is the city where {o} has its headquarters?",
                river[city],
                [f"org:{o}", f"city:{city}"],
                [f"{o} headquarters", f"{city} river"],
            ),
            (
                f"What field does the founder of {o} work in?",
                field[f],
                [f"org:{o}", f"person:{f}"],
                [f"{o} founder", f"{f} researcher field"],
            ),
        ]

    # train and test ask about disjoint organisations
    order = list(orgs)
    rng.shuffle(order)
    n_test = max(1, int(len(order) * test_fraction))
    splits = []
    for part in (order[n_test:], order[:n_test]):
        items = [
            QAItem(f"synth-{seed}-{orgs.index(o)}-{k}", q, (a,), tuple(sup), tuple(hops))
            for o in part
            for k, (q, a, sup, hops) in enumerate(questions(o))
        ]
        rng.shuffle(items)
        splits.append(tuple(items))
    return QADataset(tuple(corpus), splits[0], splits[1])


def load_jsonl_dataset(corpus_path: str, train_path: str, test_path: str | None) -> QADataset:
    """Search-R1-style JSONL files (see the module docstring)."""

    def items(path):
        rows = []
        with open(path) as f:
            for n, line in enumerate(f):
                if line.strip():
                    row = json.loads(line)
                    answers = row.get("golden_answers") or row.get("answer")
                    if isinstance(answers, str):
                        answers = [answers]
                    rows.append(
                        QAItem(
                            str(row.get("id", n)),
                            row["question"],
                            tuple(answers),
                            tuple(row.get("supporting_ids", ())),
                            tuple(row.get("hops", ())),
                        )
                    )
        return tuple(rows)

    with open(corpus_path) as f:
        corpus = tuple(json.loads(line) for line in f if line.strip())
    train = items(train_path)
    return QADataset(corpus, train, items(test_path) if test_path else train)
