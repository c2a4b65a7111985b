"""The README tells the truth about configuration and its two commands."""

from pathlib import Path

from spotleash.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    missing = [n for n in Settings.model_fields if f"`SPOTLEASH_{n.upper()}`" not in README]
    assert missing == [], f"run scripts/readme_config.py; undocumented: {missing}"


def test_readme_shows_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README and "make test" in README
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
