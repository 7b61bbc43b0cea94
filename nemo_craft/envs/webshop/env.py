"""A WebShop-like shop: WebShop's action grammar and pages over a seeded catalogue.

Actions: ``search[query]`` on the search page, ``click[button]`` elsewhere (buttons are matched
case-insensitively). Pages: search -> results (10 a page, ``next >`` / ``< prev``) -> item (option
buttons, ``description`` / ``features`` / ``reviews`` sub-pages, ``buy now``) -> done. Buying ends
the episode with WebShop's attribute/option/price reward (``catalog.webshop_reward``); success is a
reward of 1. Observations use WebShop's simple text mode (visible texts joined by `` [SEP] ``).
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
from typing import Any

from nemo_craft.envs.base import EnvConfig, TextEnv, check_positive
from nemo_craft.envs.bm25 import build_index, query_words, top_k
from nemo_craft.envs.prompts import PromptTemplate
from nemo_craft.envs.spec import SCORE_MEAN, SUCCESS_RATE, EvalSplit, PaperMetric
from nemo_craft.envs.webshop.catalog import Goal, Product, make_catalog, make_goal, webshop_reward

_ACTION_RE = re.compile(r"^(search|click)\[(.+)\]$", re.DOTALL | re.IGNORECASE)
SEP = " [SEP] "
BACK, NEXT, PREV, BUY = "back to search", "next >", "< prev", "buy now"
SUB_PAGES = ("description", "features", "reviews")
_RESULTS_PER_PAGE = 10


@dataclasses.dataclass
class WebShopConfig(EnvConfig):
    """WebShop-like settings; 15 turns as in the paper's setup."""

    max_turns: int = 15
    history_length: int = 2
    catalog_seed: int = 0
    num_products: int = 600
    split: str = "train"
    """Goals target the first ``1 - test_fraction`` of the catalogue (train) or the rest (test)."""
    test_fraction: float = 0.2
    require_action_tags: bool = False
    """True: only ``<action>search[...]</action>`` parses; False: a bare ``click[...]`` too."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("num_products", self.num_products, minimum=20)
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")


WEBSHOP_PROMPT = PromptTemplate(
    task=(
        "You are an expert autonomous agent operating in the WebShop e-commerce platform. "
        "Your task is to: {task}. Use search[your query] on the search page and click[button] "
        "to click a button or product (for example click[buy now] or click[b0abc123])."
    ),
    compact_header="shop: {task}",
    privileged_intro="The product that fulfils this instruction and the options to choose:",
    compact_privileged_intro="target: ",
    action_what="an admissible action for the current step",
)

_INDEX_LOCK = threading.Lock()
_INDEXES: dict[tuple[int, int], Any] = {}


def _search_index(seed: int, num_products: int):
    """BM25 over product texts, one per process and catalogue."""
    with _INDEX_LOCK:
        key = (seed, num_products)
        if key not in _INDEXES:
            texts = [
                f"{p.title} {p.name} {' '.join(p.attributes)} {p.category}" for p in make_catalog(seed, num_products)
            ]
            index = build_index(texts)
            _INDEXES[key] = (index, threading.Lock())
        return _INDEXES[key]


class WebShopEnv(TextEnv):
    """Buy the product the instruction describes; privileged: the target and its options."""

    name = "webshop"
    config_cls = WebShopConfig
    eval_splits = {"test": EvalSplit("test", 0)}  # the held-out products
    paper_metrics = (PaperMetric(SCORE_MEAN, "WebShop score"), PaperMetric(SUCCESS_RATE, "WebShop success"))

    def __init__(self, config: WebShopConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self.catalog = make_catalog(cfg.catalog_seed, cfg.num_products)
        self._by_asin = {p.asin.lower(): p for p in self.catalog}
        cut = int(len(self.catalog) * (1 - cfg.test_fraction))
        self.targets = self.catalog[:cut] if cfg.split == "train" else self.catalog[cut:]
        self.goal: Goal | None = None
        self.reward_parts: dict[str, float] = {}

    # -- episode -------------------------------------------------------------------------------

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        rng = random.Random(f"webshop-goal:{seed}")
        target = self.targets[rng.randrange(len(self.targets))]
        self.goal = make_goal(rng, target)
        self.page, self.query, self.results, self.page_no = "search", "", [], 1
        self.product: Product | None = None
        self.chosen: dict[str, str] = {}
        self.sub_page = ""
        self.reward_parts = {}
        return self._render(), self._privileged(target), {"asin": target.asin}

    def _privileged(self, target: Product) -> str:
        options = ", ".join(f"{k}: {v}" for k, v in self.goal.options) or "none"
        return (
            f"Target product: {target.asin} ({target.title}), price ${target.price:.2f}. "
            f"Required attributes: {', '.join(self.goal.attributes)}. Options to click: "
            f"{options}. Then click buy now."
        )

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        kind, arg = _ACTION_RE.match(action).groups()
        kind, arg = kind.lower(), arg.strip()
        if kind == "search":
            if self.page != "search":
                return self._render(), 0.0, False, {"invalid": True}
            self.query, self.page_no, self.page = arg, 1, "results"
            self.results = self._search(arg)
            return self._render(), 0.0, False, {}
        button = arg.lower()
        if button not in {c.lower() for c in self._clickables()}:
            return self._render(), 0.0, False, {"invalid": True}
        if button == BUY:
            self.reward_parts = webshop_reward(self.product, self.chosen, self.goal)
            self.page = "done"
            return self._render(), self.reward_parts["reward"], True, {**self.reward_parts}
        self._click(button)
        return self._render(), 0.0, False, {}

    def _click(self, button: str) -> None:
        if button == BACK:
            self.page, self.product, self.chosen = "search", None, {}
        elif button == NEXT:
            self.page_no += 1
        elif button == PREV:
            if self.page == "item_sub":
                self.page = "item"
            elif self.page == "item":
                self.page, self.product, self.chosen = "results", None, {}
            else:
                self.page_no -= 1
        elif self.page == "results":
            self.page, self.product, self.chosen = "item", self._by_asin[button], {}
        elif button in SUB_PAGES:
            self.page, self.sub_page = "item_sub", button
        else:  # an option value
            for kind, values in self.product.options:
                if button in (v.lower() for v in values):
                    self.chosen[kind] = next(v for v in values if v.lower() == button)
                    break

    def _search(self, query: str) -> list[Product]:
        index, lock = _search_index(self.config.catalog_seed, self.config.num_products)
        words = query_words([query])[0]
        if not words:
            return []
        k = min(50, len(self.catalog))
        with lock:
            ids, scores = top_k(index, words, k)
        return [self.catalog[int(i)] for i, s in zip(ids, scores) if s > 0]

    # -- pages ---------------------------------------------------------------------------------

    def _page_results(self) -> list[Product]:
        start = (self.page_no - 1) * _RESULTS_PER_PAGE
        return self.results[start : start + _RESULTS_PER_PAGE]

    def _clickables(self) -> list[str]:
        if self.page == "results":
            more = self.page_no * _RESULTS_PER_PAGE < len(self.results)
            return (
                [BACK]
                + ([PREV] if self.page_no > 1 else [])
                + ([NEXT] if more else [])
                + [p.asin.lower() for p in self._page_results()]
            )
        if self.page == "item":
            values = [v for _, vs in self.product.options for v in vs]
            return [BACK, PREV, *values, *SUB_PAGES, BUY]
        if self.page == "item_sub":
            return [BACK, PREV]
        return []

    def _render(self) -> str:
        head = ["Instruction:", self.goal.instruction]
        if self.page == "search":
            return SEP.join(["WebShop", *head, "Search"])
        if self.page == "results":
            parts = [
                *head,
                "Back to Search",
                f"Page {self.page_no} (Total results: {len(self.results)})",
            ]
            parts += ["< Prev"] if self.page_no > 1 else []
            parts += ["Next >"] if self.page_no * _RESULTS_PER_PAGE < len(self.results) else []
            for p in self._page_results():
                parts += [p.asin, p.title, f"${p.price:.2f}"]
            return SEP.join(parts)
        if self.page == "item":
            p, parts = self.product, [*head, "Back to Search", "< Prev"]
            for kind, values in p.options:
                parts += [kind, *values]
            chosen = ", ".join(f"{k}: {v}" for k, v in self.chosen.items()) or "none"
            parts += [
                p.title,
                f"Price: ${p.price:.2f}",
                f"Rating: {p.rating}",
                f"Selected: {chosen}",
                "Description",
                "Features",
                "Reviews",
                "Buy Now",
            ]
            return SEP.join(parts)
        if self.page == "item_sub":
            p = self.product
            body = {
                "description": p.description,
                "features": " ".join(p.features),
                "reviews": f"Rated {p.rating} out of 5.",
            }[self.sub_page]
            return SEP.join([*head, "Back to Search", "< Prev", body])
        return SEP.join(
            [
                "Thank you for shopping with us!",
                "Your score (min 0.0, max 1.0)",
                f"{self.reward_parts.get('reward', 0.0):.2f}",
            ]
        )

    # -- model text ----------------------------------------------------------------------------

    def parse_action(self, text: str) -> str | None:
        inner = self.action_body(text)
        if inner is None:
            return None
        found = _ACTION_RE.match(inner.strip())
        if found is None or not found.group(2).strip():
            return None
        return f"{found.group(1).lower()}[{' '.join(found.group(2).split())}]"

    def prompt_template(self) -> PromptTemplate:
        return WEBSHOP_PROMPT

    def task_description(self) -> str:
        return self.goal.instruction if self.goal is not None else ""

    def _admissible(self) -> list[str]:
        if self.goal is None or self.page == "done":
            return []
        if self.page == "search":
            return ["search[<your query>]"]
        return [f"click[{c}]" for c in self._clickables()]

    def expert_actions(self) -> list[str]:
        target = self._by_asin[self.goal.asin.lower()]
        plan = [f"search[{target.title}]", f"click[{target.asin.lower()}]"]
        plan += [f"click[{value}]" for _, value in self.goal.options]
        return [f"<action>{a}</action>" for a in plan + ["click[buy now]"]]

    def _progress(self) -> tuple[bool, float]:
        reward = self.reward_parts.get("reward", 0.0)
        return reward >= 1.0, reward
