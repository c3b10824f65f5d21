"""The Batch and Files API as the annotate engine needs it, through the official `openai` client.

Every call is retried with exponential backoff and jitter on 429, 408/409 (where safe), 5xx,
timeouts and connection errors, honouring `retry-after`, at most `max_retries` times (the spec's
`judge.openai.maxRetries` unless the constructor says otherwise: the operator, which steps the
judge once per reconcile pass, passes a small number so a step returns quickly); the client's own
retries are off so this policy is the only one. Each failed try is logged at WARNING at once
(throttled), naming the base URL, the try and the next retry. After the last try the call raises
`TransientApiError`; the client remembers the failure (`last_failure`) until a call gets an
answer again (`answered` counts those), which is how the engine tracks an outage.

A 401/403 raises `FatalApiError` naming the environment variable of the key (never the key).
Other 4xx answers raise `ApiRequestError` (call, status, code and the API's message) for the
engine to repair or record. The key is read from the environment variable the spec names (a
Kubernetes Secret is mounted into it).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable, Collection, Iterator
from typing import IO, Any, Final, TypeVar

import httpx2
import openai

from synthpref.backends.openai_chat import retry_after_seconds, transport_cause
from synthpref.backends.retrylog import RetryLog
from synthpref.errors import SynthprefError
from synthpref.retrying import backoff_delay
from synthpref.spec import OpenAIEndpoint

log = logging.getLogger(__name__)

T = TypeVar("T")
ENDPOINT: Final = "/v1/chat/completions"
DOWNLOAD_CHUNK_BYTES: Final = 1024 * 1024
BATCH_PAGE: Final = 100  # the most batches one listing page may hold


class FatalApiError(SynthprefError, RuntimeError):
    """An API answer no retry can change (bad key, no access)."""


class TransientApiError(SynthprefError, RuntimeError):
    """The API kept failing (429/5xx/connection) after every retry; try again later."""


class ApiRequestError(SynthprefError, RuntimeError):
    """A 4xx answer other than auth (e.g. 400 bad parameter, 404 unknown id): `call` is what was
    tried (`create a batch for file-...`), `api_message` the service's own words."""

    def __init__(
        self,
        message: str,
        status: int,
        code: str | None,
        *,
        call: str = "",
        api_message: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.call = call
        self.api_message = api_message


def _api_message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("message")
    return message if isinstance(message, str) else ""


def _detail(error: openai.APIStatusError) -> str:
    message = _api_message(error)
    code = f" {error.code}" if error.code else ""
    text = f"HTTP {error.status_code}{code}"
    return f"{text}: {message}" if message else text


class BatchClient:
    """Files + Batches calls with retries; one instance per process is enough."""

    def __init__(
        self,
        endpoint: OpenAIEndpoint,
        *,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        seed: int | None = None,
        max_retries: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.max_retries = endpoint.max_retries if max_retries is None else max_retries
        key = api_key if api_key is not None else os.environ.get(endpoint.api_key_env)
        if not key:
            raise FatalApiError(
                f"no API key for the judge: environment variable {endpoint.api_key_env} is not set"
            )
        self._client = openai.OpenAI(
            api_key=key,
            base_url=endpoint.base_url,
            max_retries=0,
            timeout=endpoint.timeout_seconds,
            # A redirect would carry the key to wherever the endpoint points: never followed.
            http_client=openai.DefaultHttpxClient(follow_redirects=False),
        )
        self._sleep = sleep
        self._rng = random.Random(seed)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_log = RetryLog(
            f"judge endpoint {self.where}", log, last_try="tried again on the next step"
        )
        # When set (by the Annotator, on its clock): no retry sleeps past it, none starts after.
        self.give_up_at: float | None = None
        self.clock: Callable[[], float] = time.time
        self.answered = 0  # calls the service answered (2xx, or a 4xx the engine judges)
        self.last_failure: str | None = None  # the last try's transport error, until an answer
        self.failed_tries = 0  # tries in a row without an answer

    @property
    def where(self) -> str:
        return self.endpoint.base_url or os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        what: str,
        call: Callable[[], T],
        retry_conflict: bool = True,
        retry_unknown_outcome: bool = True,
    ) -> T:
        """Call the API with retries. With `retry_unknown_outcome` off, a failure after which
        the call may still have taken effect (connection lost, 408, 5xx) is not re-sent but
        raised as TransientApiError, so the caller can look up what happened first."""
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                result = call()
            except openai.APIStatusError as error:
                status = error.status_code
                retryable = (
                    status in (408, 429) or status >= 500 or (status == 409 and retry_conflict)
                )
                if not retryable:
                    self._answered()
                if status in (401, 403):
                    code = f" {error.code}" if error.code else ""
                    # The server's message may echo part of the key: only status and code.
                    raise FatalApiError(
                        f"{self.where} rejected the judge's API key from "
                        f"${self.endpoint.api_key_env} (HTTP {status}{code}) while trying to "
                        f"{what}"
                    ) from None
                if not retryable:
                    raise ApiRequestError(
                        f"{what}: {_detail(error)}",
                        status,
                        error.code,
                        call=what,
                        api_message=_api_message(error),
                    ) from None
                cause, unreachable, rate_limited = _detail(error), False, status == 429
                retry_after = retry_after_seconds(error.response.headers)
            except openai.APIConnectionError as error:  # APITimeoutError included
                cause, unreachable, rate_limited = transport_cause(error), True, False
            else:
                self._answered()
                return result
            self.last_failure = f"{what}: {cause}"
            self.failed_tries += 1
            if not rate_limited and not retry_unknown_outcome:
                self.retry_log.failed(self.failed_tries, None, cause, unreachable=unreachable)
                raise TransientApiError(f"{what}: outcome unknown after {cause}") from None
            if attempt == attempts:
                self.retry_log.failed(self.failed_tries, None, cause, unreachable=unreachable)
                break
            delay = backoff_delay(
                attempt, self.backoff_base_s, self.backoff_max_s, self._rng, retry_after
            )
            if self.give_up_at is not None:
                remaining = self.give_up_at - self.clock()
                if remaining <= 0:  # the caller gives up now: no more tries
                    self.retry_log.failed(self.failed_tries, None, cause, unreachable=unreachable)
                    break
                delay = min(delay, remaining)
            self.retry_log.failed(self.failed_tries, delay, cause, unreachable=unreachable)
            self._sleep(delay)
        raise TransientApiError(
            f"{what}: {self.where} still failing after {attempts} attempt(s): {cause}"
        )

    def _answered(self) -> None:
        self.answered += 1
        self.last_failure = None
        self.failed_tries = 0

    # ---- files

    def upload(self, filename: str, data: IO[bytes]) -> Any:
        """Upload `data` (a seekable file, sent in chunks; every retry starts it again)."""
        return self._call(
            f"upload {filename}",
            lambda: self._client.files.create(file=(filename, data), purpose="batch"),
        )

    def find_file(self, filename: str, size: int) -> Any | None:
        """An uploaded batch input file with this name and size (an upload not yet recorded),
        searched through every page of the file listing."""
        after: str | None = None
        while True:
            page = self._call("list files", functools.partial(self._list_files, after))
            for item in page.data:
                if item.filename == filename and item.bytes == size:
                    return item
            if not page.data or not page.has_more:
                return None
            after = page.data[-1].id

    def _list_files(self, after: str | None) -> Any:
        if after is None:
            return self._client.files.list(purpose="batch")
        return self._client.files.list(purpose="batch", after=after)

    def download(self, file_id: str, into: IO[bytes]) -> int:
        """Stream a file's content into `into` (from its start; a retry starts it again) in
        chunks of DOWNLOAD_CHUNK_BYTES, so memory stays flat in the file's size; its size."""

        def fetch() -> int:
            into.seek(0)
            into.truncate()
            with self._client.with_streaming_response.files.content(file_id) as response:
                try:
                    for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                        into.write(chunk)
                except httpx2.HTTPError as error:  # the connection broke mid-body
                    raise openai.APIConnectionError(
                        message=f"{type(error).__name__}: {error}", request=response.http_request
                    ) from error
            into.flush()
            return into.tell()

        return self._call(f"download file {file_id}", fetch)

    def delete_file(self, file_id: str) -> None:
        try:
            self._call(f"delete file {file_id}", lambda: self._client.files.delete(file_id))
        except ApiRequestError as error:
            if error.status != 404:
                raise

    # ---- batches

    def create_batch(self, file_id: str, metadata: dict[str, str]) -> Any:
        # Neither a 409 nor a lost answer is retried blindly: the batch may exist already, and
        # the engine looks for it before it creates one again.
        return self._call(
            f"create a batch for {file_id}",
            lambda: self._client.batches.create(
                input_file_id=file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata=metadata,
            ),
            retry_conflict=False,
            retry_unknown_outcome=False,
        )

    def find_batch(self, metadata: dict[str, str], since: float) -> Any | None:
        """The newest batch whose metadata includes `metadata`, created at or after `since`
        (server time); the listing is newest first, so the search stops at older batches."""
        for batch in self._batches_since(since):
            found = batch.metadata or {}
            if all(found.get(k) == v for k, v in metadata.items()):
                return batch
        return None

    def batches(self, ids: Collection[str], since: float) -> dict[str, Any]:
        """The batches named in `ids`, by id, from one paged listing (newest first, 100 a
        page) that stops once every one was seen or at batches created before `since`
        (server time): one call per page however many batches are in flight, instead of one
        retrieve each. A batch the listing does not show is missing from the answer."""
        wanted = set(ids)
        found: dict[str, Any] = {}
        if not wanted:
            return found
        for batch in self._batches_since(since):
            if batch.id in wanted:
                found[batch.id] = batch
                if len(found) == len(wanted):
                    break
        return found

    def _batches_since(self, since: float) -> Iterator[Any]:
        """Every batch created at or after `since`, newest first, a page per call."""
        after: str | None = None
        while True:
            page = self._call("list batches", functools.partial(self._list_batches, after))
            for batch in page.data:
                if batch.created_at < since:
                    return
                yield batch
            if not page.data or not page.has_more:
                return
            after = page.data[-1].id

    def _list_batches(self, after: str | None) -> Any:
        if after is None:
            return self._client.batches.list(limit=BATCH_PAGE)
        return self._client.batches.list(limit=BATCH_PAGE, after=after)

    def retrieve(self, batch_id: str) -> Any:
        return self._call(
            f"retrieve batch {batch_id}", lambda: self._client.batches.retrieve(batch_id)
        )

    def cancel(self, batch_id: str) -> Any:
        """Cancel a batch; one that already ended (409) is returned as it is."""
        try:
            return self._call(
                f"cancel batch {batch_id}",
                lambda: self._client.batches.cancel(batch_id),
                retry_conflict=False,
            )
        except ApiRequestError as error:
            if error.status != 409:
                raise
            return self.retrieve(batch_id)
