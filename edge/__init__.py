"""The edge node: a gRPC Generator server running compressed small models on CPU.

The inference engine is importable from here; names resolve lazily so that importing
`tierlm.edge` (e.g. for its request types) does not load torch.
"""

import importlib

_EXPORTS = {
    "DecoderEngine": "engine",
    "TextEngine": "protocol",
    "EventStream": "protocol",
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
    "Transformer": "decoder",
    "load_model": "decoder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
