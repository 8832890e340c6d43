"""Broken trl-formatkit plugins, one per module (see pyproject.toml)."""
