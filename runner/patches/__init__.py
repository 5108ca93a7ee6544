"""Small, clearly scoped replacements of one module's forward in one transformers model class (see each module)."""
