"""The names of the contract's files, apart from their parsers: the hooks and status name them on every
run, and the parsers of input.yml and recipe.yml import pydantic."""

from __future__ import annotations

INPUT_FILE = "input.yml"
RECIPE_FILE = "recipe.yml"
