"""Build the chat backend a model spec asks for; heavy imports happen only when needed."""

from __future__ import annotations

from synthpref.backends.base import ChatBackend
from synthpref.spec import GenerationBackend, JudgeSpec, ModelSpec


def backend_for_model(model: ModelSpec) -> ChatBackend:
    """vLLM (loaded now, once for the process) or an OpenAI-compatible endpoint."""
    if model.backend is GenerationBackend.OPENAI:
        from synthpref.backends.openai_chat import OpenAIChatBackend

        return OpenAIChatBackend.from_model_spec(model)
    from synthpref.backends.vllm_offline import VllmChatBackend

    return VllmChatBackend.from_model_spec(model)


def backend_for_judge(judge: JudgeSpec) -> ChatBackend:
    """The offline vLLM judge (the OpenAI judge goes through the Batch API instead)."""
    from synthpref.backends.vllm_offline import VllmChatBackend

    return VllmChatBackend.for_judge(judge)
