"""debias: audit text-to-image diffusion models for gender bias across professions, and fix it.

The public API mirrors the command line verbs (``audit``, ``fix``, ``report``, ``edit``).
Names are imported lazily so that ``import debias`` and ``debias --help`` stay fast and do not
pull in torch until a model is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DebiasError": "debias.core.errors",
    "load_pipeline": "debias.core.models",
    "find_cross_attention": "debias.core.models",
    "fingerprint": "debias.core.models",
    "load_model": "debias.core.setup",
    "LoadedModel": "debias.core.setup",
    "AuditResult": "debias.results.records",
    "FixResult": "debias.results.records",
    "get_profile": "debias.core.profiles",
    "register_profile": "debias.core.profiles",
    "Profile": "debias.core.profiles",
    "edit_matrix": "debias.editing",
    "joint_edit_matrix": "debias.editing",
    "lambda_scale": "debias.editing",
    "align_tokens": "debias.editing",
    "edit_rows": "debias.editing",
    "edit_from_prompts": "debias.editing",
    "conditioning_transform": "debias.editing",
    "bake_edit": "debias.editing",
    "revert_edit": "debias.editing",
    "save_edit": "debias.editing",
    "load_edit": "debias.editing",
    "shipped_edit_error": "debias.editing",
    "edit": "debias.verbs.edit",
    "EditResult": "debias.verbs.edit",
    "audit": "debias.verbs.audit",
    "fix": "debias.verbs.fix",
    "FixOptions": "debias.fixing.options",
    "render_report": "debias.report",
    "MemoryOptions": "debias.core.options",
    "RuntimeOptions": "debias.core.options",
    "PromptOptions": "debias.core.options",
    "GenerationOptions": "debias.core.options",
    "ClassifierOptions": "debias.core.options",
    "SearchOptions": "debias.core.options",
    "Attribute": "debias.core.attributes",
    "get_attribute": "debias.core.attributes",
    "load_attribute_file": "debias.core.attributes",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'debias' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
