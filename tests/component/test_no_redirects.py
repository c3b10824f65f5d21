"""No client of synthpref follows a redirect while it carries credentials: the judge's Batch
API client, the openai generation backend and the S3 client each send their request to the
endpoint they were given, and a 307 from it to another host (a listener standing in for an
outside host) reaches that host with nothing: not the API key, not a signed S3 request."""

from __future__ import annotations

import contextlib

import pytest

from synthpref.annotate.client import BatchClient
from synthpref.backends.base import ChatRequest
from synthpref.backends.openai_chat import OpenAIChatBackend
from synthpref.spec import OpenAIEndpoint
from synthpref.storage import S3Storage, StorageError, s3_client
from tests.support.listener import Listener

KEY = "sk-run-own-key"


def test_the_judges_batch_client_does_not_follow_a_redirect() -> None:
    with Listener() as outside, Listener(redirect_to=outside.url) as endpoint:
        client = BatchClient(
            OpenAIEndpoint(base_url=f"{endpoint.url}/v1", max_retries=0),
            api_key=KEY,
            max_retries=0,
        )
        try:
            with pytest.raises(Exception, match=r"307|[Rr]edirect"):
                client.find_file("synthpref-x.jsonl", 10)
        finally:
            client.close()
    assert endpoint.received and endpoint.received[0].headers["authorization"] == f"Bearer {KEY}"
    assert outside.received == []


def test_the_openai_generation_backend_does_not_follow_a_redirect() -> None:
    with Listener() as outside, Listener(redirect_to=outside.url) as endpoint:
        backend = OpenAIChatBackend(
            "m", OpenAIEndpoint(base_url=f"{endpoint.url}/v1", max_retries=0), api_key=KEY
        )
        request = ChatRequest("k", [{"role": "user", "content": "hi"}], max_tokens=4)
        with contextlib.suppress(Exception):  # a 307 is an error or a failed row: either is fine
            backend.complete([request])
    assert endpoint.received and endpoint.received[0].headers["authorization"] == f"Bearer {KEY}"
    assert outside.received == []


def test_the_s3_client_does_not_follow_a_redirect() -> None:
    with Listener() as outside, Listener(redirect_to=outside.url) as endpoint:
        client = s3_client(
            endpoint.url, "us-east-1", access_key_id="AKIARUN", secret_access_key="run-secret"
        )
        storage = S3Storage("s3://bucket/run", client)
        with pytest.raises(StorageError, match="redirects"):
            storage.read_bytes("prompts/manifest.json")
    assert endpoint.received and "AKIARUN" in endpoint.received[0].headers["authorization"]
    assert outside.received == []
