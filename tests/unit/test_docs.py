"""The project's copy of the specification stays in step with the shared one."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_design_is_the_specification_plus_the_projects_appendix() -> None:
    ours = (ROOT / "docs" / "design.md").read_text()
    assert "## Appendix: choices this project made" in ours
    shared = ROOT.parent / "shared" / "DESIGN.md"
    if shared.exists():  # beside a checkout, as on the developers' machines and CI
        assert ours.startswith(shared.read_text())


def test_the_readme_links_only_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme
