"""The contract: input.yml (pydantic models and loader, YAML with positions), .bread, recipe.yml,
keys and model identity. Above the base modules; reads files, never git history."""
