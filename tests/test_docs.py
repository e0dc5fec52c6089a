"""The README is a front door and docs/ matches the tree: short, no dead paths, every module in the layout.

Documentation goes stale silently: a module moves and the page that names it still reads well. These checks
make the staleness a test failure instead, pointing at the page and the path to fix.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 250

# Where a relative path may resolve, besides the repository root and the page's own folder: gin files are
# named as the CLI takes them (`--gin-file models/tiny_switch.gin` reads gin/models/tiny_switch.gin).
EXTRA_ROOTS = [REPO / "gin"]
# Paths that name what a user's run creates, not files of the repository: run directories and their
# contents, a wheel's build folder and a fresh virtual environment.
IGNORED_PREFIXES = ("runs/", "RUN_DIR/", "predictions/", "checkpoints/", "dist/", "ENV/", ".venv/", ".venv-peer/")
# Templates: `results/<scale>/TABLE.csv`, `step_N.jsonl`, `calibration/multilingual-*`, `[E, …]`.
PLACEHOLDER = re.compile(r"[<>*…{}]|\.\.\.|(?<![A-Za-z])(TABLE|RUN_DIR|DIR|ENV|N)(?![a-z])")
EXTENSIONS = ("py", "md", "gin", "csv", "json", "jsonl", "cc", "toml", "txt", "gz", "model", "svg", "png", "whl")
PATH_TOKEN = re.compile(r"[A-Za-z0-9_.\-/]+")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _looks_like_path(token: str) -> bool:
    """A repository path as prose names one: relative, with a folder, ending in a file extension or '/'."""
    if not PATH_TOKEN.fullmatch(token) or token.startswith("/") or "/" not in token:
        return False
    if not re.search(r"[A-Za-z]", token):
        return False
    if token.endswith("/"):
        return True
    name = token.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[-1] in EXTENSIONS


def named_paths(page: Path) -> list[str]:
    """Every relative path `page` names: markdown link targets and path-like tokens of inline code spans.

    Fenced code blocks are commands to type, whose paths are often the user's own, so they are not read.
    """
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = []
    for target in LINK.findall(text):
        target = target.split("#", 1)[0]
        if target and not re.match(r"[a-z][a-z0-9+.-]*:", target):
            found.append(target)
    for span in CODE_SPAN.findall(text):
        found += [token for token in span.split() if _looks_like_path(token)]
    return [p for p in found if not p.startswith(IGNORED_PREFIXES) and not PLACEHOLDER.search(p)]


def _exists(page: Path, path: str) -> bool:
    return any((root / path).exists() for root in (REPO, page.parent, *EXTRA_ROOTS))


def package_modules() -> list[str]:
    """The dotted name of every module of the package (a package by its own name, not `.__init__`)."""
    names = []
    for path in sorted((REPO / "switchrepro").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_readme_is_at_most_250_lines():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail to docs/ (at most {MAX_README_LINES})"


def test_the_path_finder_reads_links_and_code_spans_and_skips_templates(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](docs/tables.md#x) [b](https://example.org/x.md) `switchrepro/resources.py` "
                    "`results/<scale>/TABLE.csv` `runs/tiny_switch` `--gin-file models/tiny_switch.gin` "
                    "`MoeConfig.dispatch = 'dropless'` `1/√d_kv` `results/mini/` `c4/en:3.1.0`\n"
                    "```bash\nls missing/inside_a_fence.py\n```\n")
    assert named_paths(page) == ["docs/tables.md", "switchrepro/resources.py", "models/tiny_switch.gin",
                                 "results/mini/"]


def test_every_path_named_in_the_readme_and_docs_exists():
    assert (DOCS / "architecture.md").is_file(), "docs/architecture.md is missing"
    missing = [f"{page.relative_to(REPO)}: {path}" for page in PAGES for path in named_paths(page)
               if not _exists(page, path)]
    assert not missing, "paths named in the docs that do not exist (fix the page or the path):\n" + "\n".join(missing)


def test_every_module_of_the_package_is_in_the_layout():
    layout = (DOCS / "architecture.md").read_text(encoding="utf-8")
    absent = [name for name in package_modules()
              if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\.?\w)", layout)
              and not re.search(rf"(?<![\w/]){re.escape(name.replace('.', '/'))}(\.py|/)(?!\w)", layout)]
    assert not absent, "modules missing from docs/architecture.md (add one line each):\n" + "\n".join(absent)


def test_every_module_the_layout_names_exists():
    """The reverse of the test above: a module that moved or went away leaves no line behind."""
    layout = FENCE.sub("", (DOCS / "architecture.md").read_text(encoding="utf-8"))
    modules = set(package_modules())
    named = {name for span in CODE_SPAN.findall(layout) for name in re.findall(r"switchrepro(?:\.\w+)+", span)}
    stale = sorted(name for name in named if name not in modules and name.rsplit(".", 1)[0] not in modules)
    assert not stale, "docs/architecture.md names modules that do not exist:\n" + "\n".join(stale)


def test_readme_results_block_matches_the_report():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "readme_results.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or done.stdout
