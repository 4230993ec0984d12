from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_shows_the_two_commands_and_the_license() -> None:
    assert "make run" in README and "make test" in README
    assert "curl -F file=@photo.jpg http://127.0.0.1:8000/remove-background" in README
    assert "AGPL-3.0" in README
