"""Size limits shared by the checker's layers (no imports, so no sympy)."""

MAX_RAW_CHARS = 10_000
"""Answers longer than this are only compared as exact strings (never parsed)."""

MAX_ANSWER_CHARS = 300
"""Normalised answers longer than this are never parsed."""

MAX_EXPONENT = 10_000
"""Largest numeric exponent that sympy may evaluate."""

MAX_FACTORIAL = 1_000
"""Largest factorial argument that sympy may evaluate."""
