"""docs/outputs.md describes every metric key the code can log: each literal metric key in
nemo_craft/ and each credit statistic (logged as credit/<name>)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIXES = "rollout|train|loss|credit|controller|time|perf|val|warm_start"


def _documented() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", (REPO / "docs" / "outputs.md").read_text(), flags=re.M))


def test_every_metric_key_in_the_code_is_documented():
    in_code = set()
    for path in (REPO / "nemo_craft").rglob("*.py"):
        in_code |= set(re.findall(rf'"((?:{PREFIXES})/[a-z0-9_]+)"', path.read_text()))
    credits = (REPO / "nemo_craft" / "losses" / "credits.py").read_text()
    stats = re.search(r"stats = \{(.*?)\n    \}", credits, flags=re.S).group(1)
    more = re.search(r"stats\.update\((.*?)\n        \)", credits, flags=re.S).group(1)
    in_code |= {f"credit/{k}" for k in re.findall(r'"(\w+)":', stats) + re.findall(r"(\w+)=", more)}
    assert len(in_code) > 40, sorted(in_code)  # the scan found the keys
    missing = sorted(in_code - _documented())
    assert not missing, f"metric keys in nemo_craft/ not described in docs/outputs.md: {missing}"
