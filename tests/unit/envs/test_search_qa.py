import json

import pytest

from nemo_craft.envs import EnvPool, env_factory, make_env
from nemo_craft.envs.search_qa import (
    BM25Retriever,
    HttpRetriever,
    RetrievalServer,
    SearchQAConfig,
    exact_match,
    normalize_answer,
    synthetic_dataset,
)


def test_normalised_exact_match():
    assert normalize_answer("The  Nortin River!") == "nortin river"
    assert exact_match(" the Nortin river. ", ["Nortin River"])
    assert not exact_match("Nortin", ["Nortin River"])


def test_synthetic_data_is_deterministic_and_split_by_organisation():
    a, b = synthetic_dataset(3), synthetic_dataset.__wrapped__(3)
    assert a == b and a != synthetic_dataset(4)
    train_orgs = {q.supporting_ids[0] for q in a.train}
    test_orgs = {q.supporting_ids[0] for q in a.test}
    assert train_orgs.isdisjoint(test_orgs)
    assert sum(len(json.dumps(doc)) for doc in a.corpus) < 2_000_000


def test_same_seed_same_question_privileged_and_transitions():
    x, y = make_env("search_qa"), make_env("search_qa")
    assert x.reset(11) == y.reset(11)
    assert x.step("<search>founder</search>") == y.step("<search>founder</search>")
    assert x.reset(11)[0] != x.reset(12)[0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_replaying_the_evidence_plan_answers_correctly(split):
    env = make_env("search_qa", split=split)
    for seed in range(15):
        _, privileged, _ = env.reset(seed)
        assert privileged.startswith(f"Answer: {env.item.golden_answers[0]}")
        total = 0.0
        for text in env.expert_actions():
            obs, reward, done, info = env.step(text)
            total += reward
        assert done and info["success"] and total == 1.0


def test_wrong_answer_ends_with_zero_and_invalid_costs_001():
    env = make_env("search_qa")
    env.reset(0)
    obs, reward, done, info = env.step("I think it is Paris")
    assert info["invalid"] and reward == pytest.approx(-0.01) and not done
    obs, reward, done, info = env.step("<answer>definitely not it</answer>")
    assert done and reward == 0.0 and not info["success"]


def test_turn_budget_is_four():
    env = make_env("search_qa")
    env.reset(0)
    dones = [env.step("<search>anything</search>")[2] for _ in range(4)]
    assert dones == [False, False, False, True]


def test_http_client_against_own_server_matches_in_process_bm25():
    corpus = synthetic_dataset().corpus
    local = BM25Retriever(corpus)
    with RetrievalServer(local, "127.0.0.1", 0) as server:
        remote = HttpRetriever(server.url, timeout_s=10)
        query = synthetic_dataset().train[0].hops[0]
        assert remote.search([query, "mentor"], 3) == local.search([query, "mentor"], 3)
        env = make_env("search_qa", retriever="http", retriever_url=server.url)
        env.reset(2)
        for text in env.expert_actions():
            *_, info = env.step(text)
        assert info["success"]


def test_server_speaks_the_search_r1_schema():
    import urllib.request

    with RetrievalServer(BM25Retriever(synthetic_dataset().corpus)) as server:
        body = json.dumps({"queries": ["founder", "river"], "topk": [2, 1], "return_scores": True})
        req = urllib.request.Request(server.url, body.encode(), method="POST")
        result = json.loads(urllib.request.urlopen(req, timeout=10).read())["result"]
        assert [len(r) for r in result] == [2, 1]
        assert set(result[0][0]) == {"document", "score"}
        assert set(result[0][0]["document"]) == {"id", "contents"}
        body = json.dumps({"queries": ["founder"], "topk": 2})
        req = urllib.request.Request(server.url, body.encode(), method="POST")
        plain = json.loads(urllib.request.urlopen(req, timeout=10).read())["result"]
        assert set(plain[0][0]) == {"id", "contents"}


@pytest.mark.parametrize("topk", [0, -1, "3", 2.5, [1, 0], "beyond"])
def test_server_answers_a_bad_topk_with_400_naming_the_range(topk):
    import urllib.error
    import urllib.request

    corpus = synthetic_dataset().corpus
    topk = len(corpus) + 1 if topk == "beyond" else topk
    queries = ["founder", "river"] if isinstance(topk, list) else ["founder"]
    with RetrievalServer(BM25Retriever(corpus)) as server:
        req = urllib.request.Request(server.url, json.dumps({"queries": queries, "topk": topk}).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400
        message = json.loads(err.value.read())["error"]
        assert "topk=" in message and f"from 1 to {len(corpus)}" in message, message


def test_unreachable_server_ends_the_episode_in_the_pool():
    factory = env_factory(
        "search_qa",
        retriever="http",
        retriever_url="http://127.0.0.1:9/retrieve",
        retriever_timeout_s=1.0,
    )
    with EnvPool(factory, 1) as pool:
        pool.reset([0])
        (result,) = pool.step(["<search>x</search>"])
        assert result.done and result.error and not result.info["success"]


def test_prompts_fit_budgets():
    env = make_env("search_qa", template="compact", topk=1, max_passage_chars=120)
    env.reset(0)
    env.step(env.expert_actions()[0])
    assert len(env.render_prompt()) <= 400
    full = make_env("search_qa")
    full.reset(0)
    for text in full.expert_actions()[:-1]:
        full.step(text)
    prompt = full.render_prompt()
    assert full.item.question in prompt and "<answer>" in prompt
    assert len(prompt) / 3.5 < 1024


@pytest.mark.parametrize(
    "bad",
    [
        {"split": "dev"},
        {"retriever": "faiss"},
        {"topk": 0},
        {"dataset": "jsonl"},
        {"retriever": "http"},
    ],
)
def test_config_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SearchQAConfig(**bad)


def test_retrieval_never_takes_jax_top_k(monkeypatch):
    """bm25s's 'auto' top-k is JAX's wherever jax imports (it claims the GPU's memory, aborts in
    forked ranks, breaks ties differently): retrieval must ask for numpy whatever is installed."""
    import bm25s.selection

    def refuse(*_a, **_k):
        raise AssertionError("JAX top-k used")

    monkeypatch.setattr(bm25s.selection, "JAX_IS_AVAILABLE", True)
    monkeypatch.setattr(bm25s.selection, "_topk_jax", refuse)
    data = synthetic_dataset()
    hits = BM25Retriever(data.corpus).search([data.corpus[0]["contents"]], topk=3)[0]
    assert hits and hits[0].score > 0
