"""core: low-level pieces every catpot package may use: model loading and 4-bit settings (``core.models``), the
tiny test Llama (``core.tiny_llama``), atomic files, locks and hashes (``core.files``), and catpot's installed
version (``CATPOT_VERSION``); imports nothing from cat, evaluation, pot, trainers or recipes."""

from importlib.metadata import PackageNotFoundError, version

try:
    CATPOT_VERSION = version("catpot")  # recorded in run markers, records identities and provenance
except PackageNotFoundError:  # a checkout on PYTHONPATH that was never installed
    CATPOT_VERSION = "unknown"
