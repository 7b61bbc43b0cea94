"""``bm25s`` for the retrieval environments (Search-QA, WebShop), kept off JAX.

bm25s takes JAX's top-k wherever ``jax`` imports, and runs one JAX op when it is imported. On a
GPU machine with jax installed (NeMo and many cluster images have it) that op makes JAX claim 75%
of every visible GPU's memory in each process that imports bm25s: the trainer then runs out of
memory creating its CUDA context (seen on an H200: ``CUDA error: out of memory`` at
``torch.cuda.set_device``). JAX's top-k also aborted in forked processes there, and it breaks score
ties differently from numpy, so the same environment gave other results on other machines.

So: JAX, if it is imported by us first, runs on the CPU (``JAX_PLATFORMS=cpu``, unless the user set
it), and every top-k is numpy's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

TOPK_BACKEND = "numpy"


def import_bm25s():
    """``import bm25s`` without letting it put JAX on a GPU."""
    if "jax" not in sys.modules:  # once jax is imported its platforms are fixed; then it is the user's
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s  # a project dependency; imported late so the package imports without it

    return bm25s


def build_index(texts: Sequence[str]) -> Any:
    """A BM25 index of ``texts`` (English stop words removed)."""
    bm25s = import_bm25s()
    index = bm25s.BM25()
    index.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
    return index


def query_words(queries: Sequence[str]) -> list[list[str]]:
    """Each query's words as the index tokenises them (an empty list: nothing searchable)."""
    return [
        list(w) for w in import_bm25s().tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
    ]


def top_k(index: Any, words: Sequence[str], k: int) -> tuple[Any, Any]:
    """Document ids and scores of the ``k`` best matches of one tokenised query: [k] each."""
    ids, scores = index.retrieve([list(words)], k=k, show_progress=False, n_threads=1, backend_selection=TOPK_BACKEND)
    return ids[0], scores[0]
