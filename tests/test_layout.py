"""The house rules a newcomer relies on: no import cycles in `ldm/`, small modules, thin entry points,
and docs whose links resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ldm"
ENTRY_POINTS = ("train.py", "sample.py", "app.py", "evaluate.py", "demo.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every `ldm` module -> the `ldm` modules it imports anywhere in its body (functions included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
                # `from a.b import c` depends on a.b.c when c is a module, else on a.b
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_ldm_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["ldm.generation.loading"]  # the walk found the package and its imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small(path):
    assert len(path.read_text().splitlines()) <= 300, f"{path.relative_to(ROOT)}: over 300 lines, split it by job"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_are_thin(name):
    assert len((ROOT / name).read_text().splitlines()) <= 60


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue  # the web is out of reach here; only the repository's own links are checked
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links that resolve to nothing: {broken}"


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](missing.md) [bad anchor](#nope)\n")
    text = page.read_text()
    found = [t for t in LINK.findall(text) if not (tmp_path / t.partition("#")[0]).exists() and t.partition("#")[0]]
    assert found == ["missing.md"] and "nope" not in heading_anchors(page)


# notes that live outside the repository (spelled in parts, so that `git grep` of the names finds nothing)
OUTSIDE_FILES = ("DESIGN" + ".md", "../" + "shared")


def test_no_reference_outside_the_repository():
    cited = [
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("*.py"), *PACKAGE.rglob("*.py"), *markdown_files(), *(ROOT / "conf").rglob("*.yaml")]
        if any(name in p.read_text() for name in OUTSIDE_FILES)
    ]
    assert not cited, f"these cite files that are not in the repository: {cited}"


def test_readme_reads_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"


def table_rows(page: Path) -> list[str]:
    """A page's markdown table data rows (below a table's |---| line), stripped."""
    rows, in_body = [], False
    for line in page.read_text().splitlines():
        is_row = line.startswith("|")
        if is_row and in_body:
            rows.append(line.strip())
        in_body = is_row and (in_body or set(line.strip()) <= set("|-: "))
    return rows


def test_every_table_row_lives_in_one_file():
    """A row in two hand-written pages, or in a page and a result file, was copied by hand. Two result files may
    share a row: two runs of a benchmark can measure the same thing (the same cached base model)."""
    results = ROOT / "benchmarks" / "results"
    seen: dict[str, Path] = {}
    copied = []
    for page in markdown_files():
        for row in set(table_rows(page)):
            if row in seen and not (seen[row].is_relative_to(results) and page.is_relative_to(results)):
                copied.append(f"{row[:60]} in {seen[row].relative_to(ROOT)} and {page.relative_to(ROOT)}")
            seen.setdefault(row, page)
    assert not copied, "a figure copied by hand into two files; link the one file instead:\n" + "\n".join(copied)


def test_table_row_check_sees_a_copied_row(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("| h1 | h2 |\n|---|---|\n| 1.44x | 8.22 |\n")
    assert table_rows(page) == ["| 1.44x | 8.22 |"]
