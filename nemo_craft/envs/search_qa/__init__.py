"""Search-QA: a search tool over a corpus, exact-match reward (Search-R1 style)."""

from nemo_craft.envs.search_qa.data import QADataset, QAItem, load_jsonl_dataset, synthetic_dataset
from nemo_craft.envs.search_qa.env import SearchQAConfig, SearchQAEnv, exact_match, normalize_answer
from nemo_craft.envs.search_qa.retrieval import (
    BM25Retriever,
    HttpRetriever,
    Passage,
    RetrievalServer,
)

__all__ = [
    "BM25Retriever",
    "HttpRetriever",
    "Passage",
    "QADataset",
    "QAItem",
    "RetrievalServer",
    "SearchQAConfig",
    "SearchQAEnv",
    "exact_match",
    "load_jsonl_dataset",
    "normalize_answer",
    "synthetic_dataset",
]
