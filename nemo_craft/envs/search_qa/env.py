"""Search-QA (Search-R1 style): search with ``<search>query</search>``, answer with
``<answer>...</answer>``; reward = normalised exact match of the answer with a gold answer."""

from __future__ import annotations

import dataclasses
import re
import string
import threading
from typing import Any

from nemo_craft.envs.base import EnvConfig, TextEnv, check_positive
from nemo_craft.envs.prompts import PromptTemplate
from nemo_craft.envs.search_qa.data import QADataset, QAItem, load_jsonl_dataset, synthetic_dataset
from nemo_craft.envs.search_qa.retrieval import BM25Retriever, HttpRetriever, Passage, Retriever
from nemo_craft.envs.spec import SUCCESS_RATE, EvalSplit, PaperMetric

_ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass
class SearchQAConfig(EnvConfig):
    """Search-QA settings; the defaults are the paper's (4 turns, 0.01 invalid penalty)."""

    max_turns: int = 4
    invalid_penalty: float = 0.01
    history_length: int = 4
    dataset: str = "synthetic"
    """"synthetic" (generated, offline) or "jsonl" (``corpus_path``, ``train_path``,
    ``test_path``)."""
    split: str = "train"
    synthetic_seed: int = 0
    corpus_path: str = ""
    train_path: str = ""
    test_path: str = ""
    retriever: str = "bm25"
    """"bm25" (in process, over the dataset's corpus) or "http" (a server at ``retriever_url``)."""
    retriever_url: str = ""
    retriever_timeout_s: float = 30.0
    topk: int = 3
    max_passage_chars: int = 500
    """Each passage's text is cut to this many characters in the observation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset not in ("synthetic", "jsonl"):
            raise ValueError(f"dataset must be 'synthetic' or 'jsonl', got {self.dataset!r}")
        if self.dataset == "jsonl" and not (self.corpus_path and self.train_path):
            raise ValueError("dataset='jsonl' needs corpus_path and train_path (test_path optional)")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.retriever not in ("bm25", "http"):
            raise ValueError(f"retriever must be 'bm25' or 'http', got {self.retriever!r}")
        if self.retriever == "http" and not self.retriever_url:
            raise ValueError("retriever='http' needs retriever_url, e.g. http://host:8000/retrieve")
        check_positive("topk", self.topk)
        check_positive("max_passage_chars", self.max_passage_chars, minimum=20)


SEARCH_QA_PROMPT = PromptTemplate(
    task=(
        "You are an expert agent tasked with answering the given question step-by-step. You can "
        "call a search engine by <search> query </search>; it returns the top results between "
        "<information> and </information>. Search as many times as you need. When you have the "
        "answer, give it inside <answer> and </answer> without explanation, e.g. "
        "<answer> Beijing </answer>.\nYour question: {task}"
    ),
    compact_header="q: {task}",
    privileged_intro="The answer to this question and the passages that support it:",
    compact_privileged_intro="gold: ",
    action_format="<search> </search> tags to search, or <answer> </answer> tags to answer",
    action_what="to search or to answer",
)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD / Search-R1 EM)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golden_answers) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(gold) for gold in golden_answers)


_SHARED: dict[tuple, Any] = {}
_SHARED_LOCK = threading.Lock()


def _shared(key: tuple, build):
    """One dataset / BM25 index per process, however many environments use it."""
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = build()
        return _SHARED[key]


class SearchQAEnv(TextEnv):
    """Multi-hop question answering with a search tool; privileged: gold answer + evidence."""

    name = "search_qa"
    stop_strings = ("</search>", "</answer>")
    config_cls = SearchQAConfig
    eval_splits = {"test": EvalSplit("test", 0)}  # the test questions
    paper_metrics = (PaperMetric(SUCCESS_RATE, "Search-QA EM"),)  # success is SQuAD-normalised exact match

    def __init__(self, config: SearchQAConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.dataset == "synthetic":
            data_key = ("synthetic", cfg.synthetic_seed)
            self.data: QADataset = _shared(data_key, lambda: synthetic_dataset(cfg.synthetic_seed))
        else:
            data_key = ("jsonl", cfg.corpus_path, cfg.train_path, cfg.test_path)
            self.data = _shared(
                data_key,
                lambda: load_jsonl_dataset(cfg.corpus_path, cfg.train_path, cfg.test_path or None),
            )
        if cfg.retriever == "bm25":
            self.retriever: Retriever = _shared(("bm25",) + data_key, lambda: BM25Retriever(self.data.corpus))
        else:
            self.retriever = HttpRetriever(cfg.retriever_url, cfg.retriever_timeout_s)
        self.items = self.data.train if cfg.split == "train" else self.data.test
        self.item: QAItem | None = None
        self.answered = False
        self.correct = False

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        self.item = self.items[seed % len(self.items)]
        self.answered = self.correct = False
        return f"Question: {self.item.question}", self._privileged(), {"qid": self.item.id}

    def _privileged(self) -> str:
        lines = [f"Answer: {self.item.golden_answers[0]}"]
        for k, doc_id in enumerate(self.item.supporting_ids):
            p = Passage.from_document(self.data.passage(doc_id))
            lines.append(f"Evidence {k + 1} (Title: {p.title}) {p.text}")
        return "\n".join(lines)

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        kind, content = _ACTION_RE.match(action).groups()
        if kind == "answer":
            self.answered, self.correct = True, exact_match(content, self.item.golden_answers)
            verdict = "correct" if self.correct else "incorrect"
            return f"Your answer: {content} ({verdict})", float(self.correct), True, {}
        passages = self.retriever.search([content], self.config.topk)[0]
        return self._information(passages), 0.0, False, {"retrieved": [p.id for p in passages]}

    def _information(self, passages: list[Passage]) -> str:
        cut = self.config.max_passage_chars
        docs = [f"Doc {k + 1}(Title: {p.title}) {p.text[:cut]}" for k, p in enumerate(passages)]
        return "<information>" + ("\n".join(docs) if docs else "No results.") + "</information>"

    def parse_action(self, text: str) -> str | None:
        found = _ACTION_RE.search(text)  # the first call is the one executed, as in Search-R1
        if found is None or not found.group(2).strip():
            return None
        kind, content = found.group(1).lower(), " ".join(found.group(2).split())
        return f"<{kind}>{content}</{kind}>"

    def prompt_template(self) -> PromptTemplate:
        return SEARCH_QA_PROMPT

    def task_description(self) -> str:
        return self.item.question if self.item is not None else ""

    def expert_actions(self) -> list[str]:
        searches = [f"<search>{hop}</search>" for hop in self.item.hops]
        return searches + [f"<answer>{self.item.golden_answers[0]}</answer>"]

    def _progress(self) -> tuple[bool, float]:
        return self.correct, float(self.correct)
