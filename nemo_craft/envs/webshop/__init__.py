"""WebShop-like shopping over a seeded catalogue, and an adapter to the official WebShop."""

from nemo_craft.envs.webshop.catalog import Goal, Product, make_catalog, webshop_reward
from nemo_craft.envs.webshop.env import WebShopConfig, WebShopEnv

__all__ = ["Goal", "Product", "WebShopConfig", "WebShopEnv", "make_catalog", "webshop_reward"]
