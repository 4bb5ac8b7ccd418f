from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_layout_exists() -> None:
    for name in ("pyproject.toml", "services", "shared", "schemas", "tests", "nats", "docs"):
        assert (ROOT / name).exists(), name
