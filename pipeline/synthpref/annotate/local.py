"""The OpenAI judge as one blocking call: what `synthpref run --local` and the CLI use.

`annotate_until_done` builds the Batch API client from the spec's `judge.openai` settings (the
API key from the environment variable it names) and steps the run's request files until every
one is done; the result files then sit where `parse` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from synthpref.annotate.client import BatchClient
from synthpref.annotate.engine import Annotator
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import Storage


def annotator(spec: PreferenceRunSpec, storage: Storage, run_name: str, **kwargs: Any) -> Annotator:
    """An Annotator with a client for the spec's judge endpoint."""
    return Annotator(spec, storage, run_name, BatchClient(spec.judge.openai), **kwargs)


def annotate_until_done(
    spec: PreferenceRunSpec,
    storage: Storage,
    *,
    run_name: str,
    on_shard: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Submit, poll, fetch and resubmit until every request has a result or a reported failure;
    returns the summary as a dict."""
    engine = annotator(spec, storage, run_name)
    try:
        return asdict(engine.run_until_done(on_shard=on_shard))
    finally:
        engine.client.close()
