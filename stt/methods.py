"""The registry of self-supervised methods: ``stt train <name>``, and what label propagation
needs to know of each method's checkpoints (its feature extractor, its own protocol).

Adding a method: one module (its model, settings, presets and training function, ending in a
:class:`stt.recipe.Method`, as :mod:`stt.moco`), and one line here.
"""
from __future__ import annotations

from . import corrflow, moco, temporal
from .recipe import Method

METHODS: dict[str, Method] = {m.name: m for m in (moco.METHOD, temporal.METHOD, corrflow.METHOD)}


def method_of(ckpt: dict) -> Method | None:
    """The method a loaded checkpoint belongs to: by ``meta["kind"]`` for this project's, by
    format for a release (:func:`stt.encoder.checkpoint_format`); None for a plain trunk."""
    from .encoder import checkpoint_format

    fmt = checkpoint_format(ckpt)
    if fmt == "project":
        return next((m for m in METHODS.values() if m.kind == ckpt["meta"].get("kind")), None)
    return next((m for m in METHODS.values() if fmt in m.formats), None)


def own_protocols() -> dict[str, Method]:
    """Label-propagation protocols of their own (name -> method), besides the common one."""
    return {m.protocol: m for m in METHODS.values() if m.protocol}
