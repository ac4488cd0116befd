"""Generators of verified preference data, one module per domain.

Each domain module (``math``, ``code``, ``general``) exposes the same three
functions, which :mod:`pipelines.build_prefs` calls:

``generate(counts, sft_count, *, seed, workers) -> (splits, sft)``
    ``splits`` maps split name to ``list[PairDraft]``; ``sft`` is ``list[SftDraft]``.
    Deterministic for a seed. Prompts never repeat across the preference splits,
    and SFT prompts are disjoint from every preference split. Every draft's chosen
    response has been verified correct and its rejected response verified incorrect
    before it is returned; a candidate that fails verification is discarded.

``verify_many(items, *, workers) -> list[bool]``
    Re-verify ``(meta, response)`` pairs from scratch using only ``meta`` (the
    record's ``metadata["task"]``): True iff the response is correct. Responses may
    carry an extra leading sentence and trailing paragraphs (injected spurious
    features); verification must look only at the answer part.

``format_ok(response) -> bool``
    Whether the response follows the domain's answer format (boxed answer, a
    fenced Python block, an ``Answer:`` line).

Verifier settings (:class:`VerifierOptions`) reach only the domain that uses them:
``math`` takes ``mode=`` (``balanced`` brace matching or the paper's ``regex``) on
all three functions; ``code`` runs in the sandbox backend chosen by
:func:`pipelines.common.sandbox.set_backend`. :func:`verifier_record` says what a
domain's verdicts were produced with, for the outputs that carry them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from dataclasses import dataclass, field
from types import ModuleType

from pipelines.common.sandbox import BACKENDS

GENERATED_DOMAINS = ("general", "math", "code")
MATH_EXTRACTION = ("balanced", "regex")


@dataclass(frozen=True, kw_only=True)
class VerifierOptions:
    r"""How the verifiers check responses (``data.math_extraction``, ``sandbox``).

    Attributes:
        math_extraction: ``balanced`` (nested braces) or ``regex`` (the paper's
            ``\boxed{(.*?)}``, ALGORITHMS.md 6.1).
        sandbox_backend: the code sandbox backend (``auto``, ``bwrap``,
            ``landlock``, ``rlimit``); None: ``RMFLOW_SANDBOX`` or ``auto``.
    """

    math_extraction: str = "balanced"
    sandbox_backend: str | None = None

    def __post_init__(self) -> None:
        """Refuse an unknown extraction mode."""
        if self.math_extraction not in MATH_EXTRACTION:
            raise ValueError(
                f"math_extraction must be one of {MATH_EXTRACTION},"
                f" got {self.math_extraction!r}"
            )

    def kwargs(self, name: str) -> dict[str, str]:
        """Keyword arguments of domain ``name``'s generate/verify_many/format_ok."""
        return {"mode": self.math_extraction} if name == "math" else {}

    def remembering(self, name: str) -> contextlib.AbstractContextManager:
        """A block in which domain ``name``'s identical checks run once.

        ``code``: :func:`pipelines.domains.code_check.remembered_verdicts` (a
        sandboxed check is a program run; math and general checks are cheap
        pure functions and need no memory).
        """
        if name == "code":
            from pipelines.domains.code_check import remembered_verdicts

            return remembered_verdicts()
        return contextlib.nullcontext()

    def apply(self) -> None:
        """Select the sandbox backend for this process (code verification)."""
        if self.sandbox_backend is not None:
            from pipelines.common.sandbox import set_backend

            set_backend(self.sandbox_backend)


def add_sandbox_arg(parser: argparse.ArgumentParser) -> None:
    """``--sandbox-backend``: the code sandbox backend (config ``sandbox.backend``)."""
    parser.add_argument(
        "--sandbox-backend",
        choices=BACKENDS,
        default=None,
        help="code sandbox: auto (bwrap, else Landlock + seccomp, else refuse),"
        " bwrap, landlock, or rlimit (limits only, no isolation: opt in"
        " knowingly); default: $RMFLOW_SANDBOX or auto",
    )


def verifier_record(name: str, opts: VerifierOptions) -> dict[str, str]:
    """What domain ``name``'s verdicts were produced with, for its outputs.

    ``math``: the extraction mode; ``code``: the sandbox backend that ran the
    checks (resolved, so ``auto`` shows what it picked, and an explicit
    ``rlimit`` opt-in is visible in every output); ``general``: nothing.
    """
    if name == "math":
        return {"math_extraction": opts.math_extraction}
    if name == "code":
        from pipelines.common.sandbox import backend

        return {"sandbox": backend(opts.sandbox_backend)}
    return {}


@dataclass(kw_only=True)
class PairDraft:
    """One verified preference pair before it becomes a standard record."""

    id: str  # unique within the domain and stable for a seed, e.g. "math-00012"
    subset: str  # fine-grained family, e.g. "arith-add", "humaneval", "reverse"
    prompt: str  # the user message
    chosen: str  # assistant reply, verified correct
    rejected: str  # assistant reply, verified incorrect
    task: dict  # JSON-able; all that verify_many needs to re-check a response
    meta: dict = field(default_factory=dict)  # provenance (e.g. mutation operator)


@dataclass(kw_only=True)
class SftDraft:
    """One verified instruction-following example for SFT."""

    id: str
    subset: str
    prompt: str
    response: str  # verified correct
    task: dict
    meta: dict = field(default_factory=dict)


def domain_module(name: str) -> ModuleType:
    """Import the generator module of a built-in domain.

    Raises:
        ValueError: if ``name`` is not a generated domain.
    """
    if name not in GENERATED_DOMAINS:
        raise ValueError(
            f"domain {name!r} has no generator"
            f" (built-in: {', '.join(GENERATED_DOMAINS)}); give it data.sources"
        )
    return importlib.import_module(f"pipelines.domains.{name}")
