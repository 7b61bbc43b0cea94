"""A seeded WebShop-like product catalogue, its shopping goals, and WebShop's reward.

Products have a category path, a title, a price, attributes (e.g. "water resistant") and option
types with values (color, size, ...); a goal names a product type, some attributes, one value per
option type and a price ceiling, as WebShop's instructions do ("i need a water resistant hiking boot
with color: black, and size: 9, and price lower than 60.00 dollars").

``webshop_reward`` is the reward function of the WebShop paper (Yao et al., 2022,
``web_agent_site/engine/goal.py::get_reward``):

    r = r_type * (#attributes matched + #options matched + [price <= ceiling])
               / (#goal attributes + #goal options + 1)

with r_type 1 / 0.5 / 0.1 / 0 from query, category and title overlap. Differences here: attribute
and option matching is exact after lower-casing (the official code uses fuzzy matching, thefuzz
token_set_ratio > 85) and title overlap uses word tokens (the official code uses spaCy nouns).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re

# category -> (noun phrase choices, attributes, option types with values, price range)
_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]], tuple[int, int]]] = {
    "fashion › men › shoes › boots": (
        ("hiking boot", "work boot", "chelsea boot"),
        ("water resistant", "non slip", "rubber sole", "steel toe", "lace up", "memory foam"),
        {"color": ("black", "brown", "tan", "grey"), "size": ("8", "9", "10", "11", "12")},
        (35, 160),
    ),
    "fashion › women › clothing › tops": (
        ("t-shirt", "blouse", "tank top"),
        ("machine wash", "short sleeve", "long sleeve", "relaxed fit", "cotton", "quick dry"),
        {
            "color": ("white", "navy", "red", "pink", "green"),
            "size": ("small", "medium", "large", "x-large"),
        },
        (9, 45),
    ),
    "electronics › audio › headphones": (
        ("wireless headphones", "earbuds", "gaming headset"),
        (
            "noise cancelling",
            "bluetooth",
            "long battery life",
            "built in microphone",
            "foldable",
            "fast charging",
        ),
        {"color": ("black", "white", "blue")},
        (15, 250),
    ),
    "grocery › beverages › coffee": (
        ("ground coffee", "coffee beans", "coffee pods"),
        ("organic", "fair trade", "dark roast", "medium roast", "decaf", "gluten free"),
        {
            "flavor": ("original", "vanilla", "hazelnut", "caramel"),
            "size": ("12 ounce", "2 pound", "pack of 3"),
        },
        (7, 40),
    ),
    "beauty › hair care › shampoo": (
        ("shampoo", "conditioner", "shampoo and conditioner set"),
        (
            "sulfate free",
            "paraben free",
            "for dry hair",
            "natural ingredients",
            "cruelty free",
            "argan oil",
        ),
        {"size": ("8 fl oz", "16 fl oz", "32 fl oz"), "scent": ("coconut", "lavender", "mint")},
        (6, 38),
    ),
    "home › furniture › chairs": (
        ("office chair", "dining chair", "accent chair"),
        (
            "easy assemble",
            "lumbar support",
            "adjustable height",
            "solid wood",
            "high back",
            "faux leather",
        ),
        {"color": ("black", "grey", "beige", "walnut")},
        (40, 300),
    ),
}
_BRANDS = "Arvo Brindle Calder Dovetail Emberly Fjord Gossamer Halcyon Iverne Juniper Kestra".split()
_FEATURES = "durable lightweight premium classic everyday compact modern".split()
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = {"and", "with", "for", "of", "the", "a", "in", "to"}


@dataclasses.dataclass(frozen=True)
class Product:
    asin: str
    title: str
    name: str
    """The product type ("hiking boot"), the query it was listed under."""
    category: str
    price: float
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    description: str
    features: tuple[str, ...]
    rating: float


@dataclasses.dataclass(frozen=True)
class Goal:
    asin: str
    name: str
    category: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    price_upper: float
    instruction: str


def _tokens(text: str) -> set[str]:
    return {t for t in _TOKEN.findall(text.lower()) if t not in _STOP}


@functools.lru_cache(maxsize=4)
def make_catalog(seed: int = 0, num_products: int = 600) -> tuple[Product, ...]:
    rng = random.Random(f"webshop:{seed}")
    products = []
    categories = sorted(_CATEGORIES)
    for k in range(num_products):
        category = categories[k % len(categories)]
        names, attrs, options, (lo, hi) = _CATEGORIES[category]
        name = rng.choice(names)
        chosen = tuple(sorted(rng.sample(attrs, rng.randint(2, 4))))
        opts = tuple(
            (kind, tuple(sorted(rng.sample(values, rng.randint(2, len(values))))))
            for kind, values in sorted(options.items())
        )
        brand, feature = rng.choice(_BRANDS), rng.choice(_FEATURES)
        title = f"{brand} {feature} {name}, {', '.join(chosen[:2])}"
        price = round(rng.uniform(lo, hi), 2)
        products.append(
            Product(
                asin=f"B{rng.randrange(16**8):08X}",
                title=title,
                name=name,
                category=category,
                price=price,
                attributes=chosen,
                options=opts,
                description=f"The {brand} {name} is {feature} and {chosen[0]}.",
                features=tuple(f"{a.capitalize()}." for a in chosen),
                rating=round(rng.uniform(2.5, 5), 1),
            )
        )
    return tuple(products)


def make_goal(rng: random.Random, product: Product) -> Goal:
    attrs = tuple(sorted(rng.sample(product.attributes, rng.randint(1, min(3, len(product.attributes))))))
    options = tuple((kind, rng.choice(values)) for kind, values in product.options)
    price_upper = float(int(product.price * rng.uniform(1.1, 1.6)) + 1)
    option_text = ", and ".join(f"{kind}: {value}" for kind, value in options)
    instruction = (
        f"i need a {' and '.join(attrs)} {product.name}"
        + (f" with {option_text}" if option_text else "")
        + f", and price lower than {price_upper:.2f} dollars"
    )
    return Goal(product.asin, product.name, product.category, attrs, options, price_upper, instruction)


def type_reward(product: Product, goal: Goal) -> float:
    query_match = product.name == goal.name
    category_match = (
        len({c.strip() for c in product.category.split("›")} & {c.strip() for c in goal.category.split("›")}) >= 2
    )
    desired, bought = _tokens(goal.name), _tokens(product.title)
    title_score = 0.2 if not desired else len(desired & bought) / len(desired)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type


def webshop_reward(product: Product, chosen: dict[str, str], goal: Goal) -> dict[str, float]:
    """WebShop's reward for buying ``product`` with options ``chosen`` (see the module doc)."""
    text = " ".join((product.title, product.description, *product.features)).lower()
    have = {a.lower() for a in product.attributes}
    n_attr = sum(1 for a in goal.attributes if a.lower() in have or a.lower() in text)
    picked = {v.lower() for v in chosen.values()}
    n_opt = sum(1 for _, value in goal.options if value.lower() in picked)
    r_price = float(product.price <= goal.price_upper)
    r_type = type_reward(product, goal)
    total = (n_attr + n_opt + r_price) / (len(goal.attributes) + len(goal.options) + 1) * r_type
    return {
        "reward": total,
        "r_type": r_type,
        "r_att": n_attr / max(len(goal.attributes), 1),
        "r_option": n_opt / max(len(goal.options), 1),
        "r_price": r_price,
    }
