"""Token estimates for judge requests, used for the queued-token budget before upload.

Called by the annotate engine when it first sees a request file (and for each resubmission
file). Pure. No tokenizer is loaded: a request's estimate is, per message, the larger of
(words + punctuation marks) and ceil(characters / 3), plus 4 tokens of message overhead, plus 3
for the reply priming. BPE tokenizers of OpenAI models average about 4 characters per token on
English text, so this over-counts ordinary prose by roughly a third and still covers text with
many short words or symbols; an over-count only makes the budget stricter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

_PIECE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def text_tokens(text: str) -> int:
    """Estimated tokens of one text."""
    return max(len(_PIECE.findall(text)), math.ceil(len(text) / 3))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def request_tokens(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of one chat completions request body."""
    messages = body.get("messages") or []
    total = REPLY_PRIMING
    for message in messages:
        if isinstance(message, dict):
            total += MESSAGE_OVERHEAD + text_tokens(_content_text(message.get("content")))
    return total


def file_tokens(bodies: Iterable[dict[str, Any]]) -> int:
    """Estimated prompt tokens of a whole request file."""
    return sum(request_tokens(body) for body in bodies)
