"""Fixtures shared by every test tier: storage backends (local and a real S3 server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthpref.storage import LocalStorage, S3Storage, Storage, s3_client
from tests.support.s3 import FAKE_CREDENTIALS, new_bucket, s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over HTTP on loopback, with fake credentials in the environment."""
    saved = {key: os.environ.get(key) for key in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    try:
        with s3_server() as endpoint:
            yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_uri(s3_endpoint: str) -> str:
    """A fresh bucket and prefix: s3://bucket/run."""
    return f"s3://{new_bucket(s3_endpoint)}/run"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same tests against a local directory and a real S3 server."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return S3Storage(f"s3://{new_bucket(endpoint)}/run", s3_client(endpoint, "us-east-1"))
