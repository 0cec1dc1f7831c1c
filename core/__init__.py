"""core: low-level pieces every catpot package may use (file safety); imports nothing from cat/pot/trainers/recipes."""
