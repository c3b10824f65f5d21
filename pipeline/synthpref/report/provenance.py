"""`dataset/provenance.json`: enough to reproduce or audit a run.

Pure. Called by `report.writer` with what it read from storage. The document holds the resolved
spec (every default filled in; only references to Secrets, never their values), each model's
record as its worker wrote it (path, revision or resolved commit, weight-file SHA-256, package
versions; `model_record`), the judge's model, settings and what its replies said it was, the
SHA-256 of the judge's prompt templates and schemas, every seed, the package versions of the
process that wrote it, start and end times, counts, and the dataset files with their rows and
SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from synthpref.spec import PreferenceRunManifest, PreferenceRunSpec
from synthpref.templates import SYSTEM_PROMPT, render_messages, response_format

SCHEMA_VERSION = 1


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def template_hashes(spec: PreferenceRunSpec) -> dict[str, Any]:
    """SHA-256 of the system prompt and, per aspect, of the chat messages rendered with
    placeholders (`{prompt}`, `{answer N}`) and of the structured-output schema."""
    count = spec.mix.responses_per_prompt
    answers = [f"{{answer {n}}}" for n in range(1, count + 1)]
    aspects = {}
    for aspect in spec.mix.aspects:
        messages = render_messages(
            "{prompt}", answers, aspect, structured=spec.judge.structured_output
        )
        entry = {"messages_sha256": sha256_text(_canonical(messages))}
        if spec.judge.structured_output:
            entry["response_format_sha256"] = sha256_text(
                _canonical(response_format(count, aspect))
            )
        aspects[aspect] = entry
    return {
        "family": spec.mix.template,
        "answers_per_request": count,
        "system_prompt_sha256": sha256_text(SYSTEM_PROMPT),
        "aspects": aspects,
    }


def seeds(spec: PreferenceRunSpec) -> dict[str, Any]:
    """Every seed of the run and how the per-item seeds derive from them."""
    return {
        "models": {m.name: m.sampling.seed for m in spec.models},
        "per_answer": "stable_seed(models[].sampling.seed, model name, prompt id) mod 2^31",
        "mix": spec.mix.seed,
        "mix_uses": "which models answer each prompt, and the answer order per aspect",
        "judge": "stable_seed('judge', custom_id) mod 2^31 per request (vLLM judge)",
        "binarization": spec.binarization.seed,
    }


def build_provenance(
    manifest: PreferenceRunManifest,
    summary: Mapping[str, Any],
    *,
    model_records: Mapping[str, Mapping[str, Any] | None],
    judge_record: Mapping[str, Any] | None,
    judge_served: Sequence[str],
    judge_fingerprints: Sequence[str],
    packages: Mapping[str, str],
    times: Mapping[str, str | None],
    dataset_files: Sequence[Mapping[str, Any]],
    storage_uri: str,
) -> dict[str, Any]:
    spec = manifest.spec
    judge = spec.judge
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": manifest.metadata.name,
            "namespace": manifest.metadata.namespace,
            "storage": storage_uri,
        },
        "times": dict(times),
        "spec": spec.model_dump(mode="json", by_alias=True),
        "models": [
            {
                "name": m.name,
                "backend": m.backend.value,
                "path": m.path,
                "revision": m.revision,
                "sampling": m.sampling.model_dump(mode="json", by_alias=True),
                "engine_args": m.engine_args,
                "loaded": dict(model_records.get(m.name) or {}) or None,
            }
            for m in spec.models
        ],
        "judge": {
            "backend": judge.backend.value,
            "model": judge.model,
            "settings": {
                "structuredOutput": judge.structured_output,
                "temperature": judge.temperature,
                "maxTokens": judge.max_tokens,
                "rationaleMaxChars": judge.rationale_max_chars,
                "maxAttempts": judge.max_attempts,
                "engineArgs": judge.engine_args,
            },
            "served_as": sorted(judge_served),
            "system_fingerprints": sorted(judge_fingerprints),
            "loaded": dict(judge_record) if judge_record else None,
        },
        "templates": template_hashes(spec),
        "seeds": seeds(spec),
        "packages": dict(packages),
        "counts": {
            "prompts": int((summary.get("prepare") or {}).get("prompts", 0)),
            "duplicates": int((summary.get("prepare") or {}).get("duplicates", 0)),
            "malformed": int((summary.get("prepare") or {}).get("malformed", 0)),
            "prompts_mixed": int((summary.get("mix") or {}).get("prompts_mixed", 0)),
            "requests": int(summary.get("requests", 0)),
            "replies": int(summary.get("replies", 0)),
            "valid_ratings": int(summary.get("valid_ratings", 0)),
            "prompts_with_pairs": int(summary.get("prompts_with_pairs", 0)),
            "pairs": int(summary.get("pairs", 0)),
        },
        "losses": dict(summary.get("losses") or {}),
        "outcome": dict(summary.get("outcome") or {}),
        "dataset": {
            "uri": str(summary.get("dataset", "")),
            "format": spec.output.format.value,
            "files": [dict(f) for f in dataset_files],
        },
    }
