"""Retrievers for Search-QA, all speaking the Search-R1 / verl-agent retrieval-server API.

    POST /retrieve  {"queries": [str, ...], "topk": int (or a list, one per query),
                     "return_scores": bool}      (topk from 1 to the corpus size, else 400)
    ->  {"result": [[{"document": {"id": str, "contents": "\\"Title\\"\\ntext"}, "score": float},
                     ...], ...]}                      (with return_scores)
        {"result": [[{"id": ..., "contents": ...}, ...], ...]}    (without)

``BM25Retriever`` searches a corpus in process (``bm25s``); ``HttpRetriever`` is the client of such
a server (Search-R1's own e5/BM25 server on a cluster, or ``RetrievalServer`` here, which serves any
retriever over the same API with the standard library's HTTP server).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from nemo_craft.envs.bm25 import build_index, query_words, top_k


@dataclasses.dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float = 0.0

    @classmethod
    def from_document(cls, doc: dict, score: float = 0.0) -> Passage:
        contents = doc.get("contents", "")
        title, _, text = contents.partition("\n")
        return cls(str(doc.get("id", "")), title.strip().strip('"'), text.strip(), float(score))

    def document(self) -> dict:
        return {"id": self.id, "contents": f'"{self.title}"\n{self.text}'}


class Retriever(Protocol):
    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages for each query, best first."""


class BM25Retriever:
    """Okapi BM25 (``bm25s``) over a corpus of {"id", "contents"} documents."""

    def __init__(self, corpus: Sequence[dict]):
        self.corpus = list(corpus)
        if not self.corpus:
            raise ValueError("BM25Retriever needs a non-empty corpus")
        self._index = build_index([d["contents"] for d in self.corpus])
        self._lock = threading.Lock()

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        k = min(int(topk), len(self.corpus))
        out = []
        for words in query_words(queries):
            if not words:  # nothing searchable (only stopwords or punctuation)
                out.append([])
                continue
            with self._lock:
                ids, scores = top_k(self._index, words, k)
            out.append(
                [Passage.from_document(self.corpus[int(i)], float(s)) for i, s in zip(ids, scores) if float(s) > 0]
            )
        return out


class HttpRetriever:
    """Client of a Search-R1-style retrieval server (``url`` like http://host:8000/retrieve)."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retriever url must start with http:// or https://, got {url!r}")
        self.url = url
        self.timeout_s = timeout_s

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        body = json.dumps({"queries": list(queries), "topk": int(topk), "return_scores": True})
        request = urllib.request.Request(
            self.url,
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            result = json.loads(response.read())["result"]
        return [[_passage(item) for item in per_query] for per_query in result]


def _passage(item: dict) -> Passage:
    if "document" in item:
        return Passage.from_document(item["document"], item.get("score", 0.0))
    return Passage.from_document(item)


class RetrievalServer:
    """Serves a retriever over the retrieval-server API; ``start()`` runs it on a thread."""

    def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 0, default_topk: int = 3):
        handler = _make_handler(retriever, default_topk)
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/retrieve"

    def start(self) -> RetrievalServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="nemo-craft-retrieval")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RetrievalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_topk(k, max_topk) -> None:
    """A topk of 1 to the corpus size (or any k >= 1 for a retriever of unknown size)."""
    allowed = f"an integer from 1 to {max_topk} (the corpus size)" if max_topk else "an integer >= 1"
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (max_topk and k > max_topk):
        raise ValueError(f"topk={k!r}: must be {allowed}")


def _make_handler(retriever: Retriever, default_topk: int):
    corpus = getattr(retriever, "corpus", None)
    max_topk = len(corpus) if corpus is not None else None
    _check_topk(default_topk, max_topk)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/retrieve":
                return self._reply(404, {"error": f"no endpoint {self.path}; POST /retrieve"})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                queries = request["queries"]
                if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
                    raise ValueError("'queries' must be a list of strings")
                topk = request.get("topk", default_topk)
                topks = topk if isinstance(topk, list) else [topk] * len(queries)
                if len(topks) != len(queries):
                    raise ValueError(f"'topk' has {len(topks)} values for {len(queries)} queries")
                for k in topks:
                    _check_topk(k, max_topk)
                with_scores = bool(request.get("return_scores", False))
            except (ValueError, KeyError, TypeError) as err:
                return self._reply(400, {"error": f"bad request: {err}"})
            result = []
            for query, k in zip(queries, topks):
                found = retriever.search([query], k)[0]
                result.append(
                    [{"document": p.document(), "score": p.score} if with_scores else p.document() for p in found]
                )
            self._reply(200, {"result": result})

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # keep test and training logs quiet
            pass

    return Handler


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nemo_craft.envs.search_qa.retrieval --port 8000 [--corpus corpus.jsonl]``:
    serve BM25 over a corpus (default: the synthetic one) on the retrieval-server API."""
    import argparse

    from nemo_craft.envs.search_qa.data import synthetic_dataset  # lazy: the server alone needs no data module

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--corpus", help="corpus JSONL ({id, contents}); default: synthetic")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--topk", type=int, default=3)
    args = parser.parse_args(argv)
    if args.corpus:
        with open(args.corpus) as f:
            corpus = [json.loads(line) for line in f if line.strip()]
    else:
        corpus = list(synthetic_dataset().corpus)
    server = RetrievalServer(BM25Retriever(corpus), args.host, args.port, args.topk)
    print(f"serving BM25 over {len(corpus)} passages at {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
