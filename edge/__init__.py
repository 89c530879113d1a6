"""The edge node: a gRPC Generator server running compressed small models on CPU.

The inference engine is importable from here; names resolve lazily so that importing
`tierlm.edge` (e.g. for its request types) does not load torch.
"""

# This folder sits at the repository root but is only a package inside the tierlm namespace;
# refusing the top-level name keeps a source checkout from shadowing unrelated `edge` modules.
if __name__ != "tierlm.edge":
    raise ImportError(f"{__name__!r} is not a module of its own; import tierlm.edge instead")

import importlib

_EXPORTS = {
    "Engine": "engine",
    "RequestStream": "engine",
    "ChatMessage": "requests",
    "ChoiceScore": "requests",
    "Completion": "requests",
    "FinishReason": "requests",
    "GenerationRequest": "requests",
    "TokenDelta": "requests",
    "EngineError": "errors",
    "EngineClosed": "errors",
    "InvalidRequest": "errors",
    "QueueFull": "errors",
    "EngineHealth": "stats",
    "EngineObserver": "stats",
    "EngineStats": "stats",
    "ModelConfig": "config",
    "Transformer": "model",
    "load_model": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
