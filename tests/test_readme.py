from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_shows_the_two_commands_and_the_license() -> None:
    assert "make run" in README and "make test" in README
    assert "curl -F file=@photo.jpg http://127.0.0.1:8000/remove-background" in README
    assert "AGPL-3.0" in README


def test_relative_links_in_the_docs_point_to_files_that_exist() -> None:
    root = Path(__file__).resolve().parents[1]
    pages = [root / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    pages += sorted((root / "docs").glob("*.md"))
    link = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in link.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (http:, mailto:) or an anchor in the same page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(root)}: {target}")
    assert broken == []
