"""The front door keeps its promises: README's commands are the ones CI and the config run, every
relative link of README.md and docs/*.md resolves (file and heading anchor), and nothing in the
repository points at design sources a user who clones it does not have."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAIN_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh && nemo-craft train"

# -- Markdown helpers ----------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced and indented code blocks."""
    out, fenced, indented, previous_blank = [], False, False, True
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        if fenced:
            out.append("")
            continue
        blank = not line.strip()
        if line.startswith(("    ", "\t")) and (previous_blank or indented) and not blank:
            indented = True
        elif not blank:
            indented = False
        out.append("" if indented else line)
        previous_blank = blank
    return out


def _code_lines(text: str) -> list[str]:
    """The stripped lines of the indented and fenced code blocks (the commands a reader copies)."""
    prose = _prose_lines(text)
    return [
        line.strip()
        for line, kept in zip(text.splitlines(), prose)
        if line.strip() and not kept.strip() and not _FENCE.match(line)
    ]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """'file:line: target (why)' for each relative link of ``path`` that does not resolve."""
    problems = []
    for number, line in enumerate(_prose_lines(path.read_text(encoding="utf-8")), 1):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.name})")
    return problems


def _documents() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


# -- the commands ----------------------------------------------------------------------------------


def _ci_test_command() -> str:
    """The test command `.ci/run` runs, the first one (its Python 3.11 job), without `|| exit $?`."""
    for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        code = line.strip()
        if code and not code.startswith("#") and "pytest" in code:
            return re.sub(r"\s*\|\|\s*exit\b.*$", "", code)
    raise AssertionError(".ci/run runs no pytest command")


def test_readme_test_command_is_the_one_ci_runs():
    command = _ci_test_command()
    assert command in _code_lines(README.read_text(encoding="utf-8")), (
        f"README's test command must be .ci/run's, as a line of its own in a code block:\n    {command}"
    )


@functools.cache
def _validated(overrides: tuple[str, ...]):
    """The composed config of ``overrides`` and its validated sections (each set composed once)."""
    from nemo_craft.config import RunConfig, compose

    cfg = compose(list(overrides))
    return cfg, RunConfig.from_omegaconf(cfg)


def test_readme_main_command_is_there_and_composes():
    code = _code_lines(README.read_text(encoding="utf-8"))
    assert MAIN_COMMAND in code, f"README lost its main command:\n    {MAIN_COMMAND}"
    cfg, run = _validated(tuple(MAIN_COMMAND.split("nemo-craft train", 1)[1].split()))
    # what README says the default run is: CRAFT on Sokoban with the tiny model and its demo settings
    assert (run.loss.name, run.env_name, run.model.tokenizer) == ("craft", "sokoban", "char")
    assert cfg.trainer.warm_start.steps > 0 and cfg.trainer.max_steps == 30


def _readme_launches() -> list[tuple[str, ...]]:
    """The overrides of every `nemo-craft train|plan`, `-m nemo_craft train` and `train.sbatch` command
    of README's code blocks (lines continued with a backslash joined)."""
    commands, pending = [], ""
    for line in _code_lines(README.read_text(encoding="utf-8")):
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    out = []
    for command in commands:
        m = re.search(r"(?:nemo-craft (?:train|plan)|-m nemo_craft train|train\.sbatch)(?= |$)(.*)$", command)
        if m and "|" not in m.group(1):
            tokens = shlex.split(m.group(1), comments=True)
            out.append(tuple(t for t in tokens if not t.startswith("-") and "=" in t))
    return out


def test_every_readme_launch_composes():
    launches = _readme_launches()
    assert len(launches) >= 4, launches
    for overrides in dict.fromkeys(launches):
        _validated(overrides)


# -- links ------------------------------------------------------------------------------------------


def test_every_relative_link_resolves():
    problems = [p for doc in _documents() for p in broken_links(doc)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_catches_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## A heading, with `code`\n")
    doc = tmp_path / "a.md"
    doc.write_text(
        "[ok](b.md#a-heading-with-code) [gone](c.md) [bad anchor](b.md#nothing) [self](#top)\n\n"
        "    [in code](not-checked.md)\n\n## Top\n"
    )
    problems = broken_links(doc)
    assert len(problems) == 2 and "c.md" in problems[0] and "#nothing" in problems[1], problems


# -- self-contained ---------------------------------------------------------------------------------

# Assembled from pieces, so that this file does not match them itself.
_OUTSIDE = (
    [re.escape(name + ".md") for name in ("SPEC", "DESIGN", "STYLE")]
    + [re.escape(name + "_NOTES") for name in ("MEGATRON", "ENV", "VLLM")]
    + [
        re.escape("../" + "shared"),
        re.escape("/work/" + "shared"),
        re.escape("craft-" + "abstract"),
        r"\b" + "SPEC" + r" (?:section|\d)",
        r"\b" + "issue" + r" \d",
    ]
)
_OUTSIDE_RE = re.compile("|".join(_OUTSIDE))
_SKIP_DIRS = {".git", "__pycache__", "build", "outputs", "runs"}


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return [REPO / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: walk the tree
        return [
            p
            for p in REPO.rglob("*")
            if p.is_file()
            and not any(
                part in _SKIP_DIRS or part.startswith(".venv") or part.endswith(".egg-info")
                for part in p.relative_to(REPO).parts
            )
        ]


def test_nothing_refers_to_sources_outside_the_repository():
    hits = []
    for path in _repository_files():
        try:
            data = path.read_bytes()
        except OSError:  # listed but deleted meanwhile
            continue
        if b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if _OUTSIDE_RE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not hits, (
        "these lines refer to files a user who clones the repository does not have; "
        "point them at docs/ instead:\n" + "\n".join(hits)
    )


@pytest.mark.parametrize(
    "line",
    [
        "see SPEC" + ".md section 3",
        "(MEGATRON" + "_NOTES item 6)",
        "../" + "shared" + "/DESIGN",
        "as in issue " + "4",
        "SPEC" + " 7 / memory",
    ],
)
def test_the_outside_source_check_catches_each_form(line):
    assert _OUTSIDE_RE.search(line)
