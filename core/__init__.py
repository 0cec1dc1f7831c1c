"""core: low-level pieces every catpot package may use: model loading and 4-bit settings (``core.models``), the
tiny test Llama (``core.tiny_llama``), atomic files, locks and hashes (``core.files``); imports nothing from cat,
evaluation, pot, trainers or recipes."""
