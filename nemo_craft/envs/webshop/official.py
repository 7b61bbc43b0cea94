"""Adapter to the official WebShop (``web_agent_site``), for clusters that have it installed.

UNTESTED here: the official package needs pyserini, spaCy models and the 1.18M-product data, none
of which this project's machines can fetch (the PyPI ``webshop`` package is a stub without
``web_agent_site``). It follows the official text environment's API
(``web_agent_site.envs.web_agent_text_env.WebAgentTextEnv``: ``reset(session=idx)``,
``step(action)``, ``get_available_actions()``, ``server.goals``) and keeps this project's interface
and prompt. Use it with ``OfficialWebShopEnv(WebShopConfig(...), observation_mode="text")``.
"""

from __future__ import annotations

from typing import Any

from nemo_craft.envs.webshop.env import WebShopConfig, WebShopEnv


class OfficialWebShopEnv(WebShopEnv):
    """The official WebShop text environment behind the project's interface (see module doc)."""

    name = "webshop_official"

    def __init__(self, config: WebShopConfig | None = None, **official_kwargs: Any) -> None:
        try:
            from web_agent_site.envs.web_agent_text_env import WebAgentTextEnv
        except ImportError as err:
            raise ImportError(
                "OfficialWebShopEnv needs the official WebShop (web_agent_site) with its data; "
                "use the 'webshop' environment (seeded catalogue) otherwise"
            ) from err
        super().__init__(config)
        official_kwargs.setdefault("observation_mode", "text")
        self._env = WebAgentTextEnv(**official_kwargs)
        self._goal: dict[str, Any] = {}
        self._reward = 0.0

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        goals = self._env.server.goals
        session = seed % len(goals)
        observation, _ = self._env.reset(session=session)
        self._goal, self._reward = goals[session], 0.0
        options = ", ".join(f"{k}: {v}" for k, v in self._goal.get("goal_options", {}).items())
        privileged = (
            f"Target product: {self._goal.get('asin')} ({self._goal.get('name', '')}). "
            f"Required attributes: {', '.join(self._goal.get('attributes', []))}. "
            f"Options to click: {options or 'none'}. Price below "
            f"{self._goal.get('price_upper')}. Then click buy now."
        )
        return observation, privileged, {"asin": self._goal.get("asin"), "session": session}

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if action.lower() not in {a.lower() for a in self._admissible()} and not (
            action.startswith("search[") and "search[<your query>]" in self._admissible()
        ):
            return self.observation, 0.0, False, {"invalid": True}
        observation, reward, done, _ = self._env.step(action)
        self._reward = float(reward or 0.0)
        return observation, self._reward, bool(done), {}

    def _admissible(self) -> list[str]:
        available = self._env.get_available_actions()
        actions = ["search[<your query>]"] if available.get("has_search_bar") else []
        return actions + [f"click[{c}]" for c in available.get("clickables", [])]

    def task_description(self) -> str:
        return self._goal.get("instruction_text", "")

    def expert_actions(self) -> list[str]:
        raise NotImplementedError("the official WebShop has human demonstrations, not a planner")

    def _progress(self) -> tuple[bool, float]:
        return self._reward >= 1.0, self._reward

    def close(self) -> None:
        self._env.close()
