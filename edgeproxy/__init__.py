"""edgeproxy: a self-hosted, OpenAI-compatible LLM gateway (see SPEC)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
