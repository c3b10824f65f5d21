"""`dataset/README.md`: a Hugging Face dataset card for the run's dataset.

Pure. Called by `report.writer`. The YAML front matter has `configs` pointing at the data files
(so `load_dataset(<the dataset folder>)` and the Hub find them and nothing else in the folder),
the task category, the size category and tags; the license is left for the user to fill in
(it depends on the prompts' and the models' licenses). The body says how the data was made,
what each column holds, and the two lines that load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from synthpref.layout import dataset_parts_pattern
from synthpref.spec import OutputFormat, PreferenceRunManifest

# Hugging Face's size categories, by number of rows.
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)

COLUMNS = (
    ("prompt_id", "string", "stable id of the prompt (first 16 hex digits of its SHA-256)"),
    ("prompt", "string", "the prompt text"),
    ("chosen", "list of {role, content}", "the conversation with the preferred answer"),
    ("rejected", "list of {role, content}", "the conversation with the other answer"),
    ("chosen_rating", "float", "mean of the chosen answer's ratings over the aspects (1-5)"),
    ("rejected_rating", "float", "mean of the rejected answer's ratings over the aspects (1-5)"),
    ("chosen_model", "string", "the model that wrote the chosen answer"),
    ("rejected_model", "string", "the model that wrote the rejected answer"),
    ("chosen_aspect_ratings", "{aspect: float}", "the chosen answer's rating per aspect"),
    ("rejected_aspect_ratings", "{aspect: float}", "the rejected answer's rating per aspect"),
    ("metadata", "object (JSON text in Parquet)", "the prompt's metadata from the prompt files"),
)


def size_category(rows: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>1B"


def data_glob(output: OutputFormat) -> str:
    """The data files' pattern, relative to the dataset folder."""
    return dataset_parts_pattern("parquet" if output is OutputFormat.PARQUET else "jsonl")


def load_snippet(dataset_uri: str, output: OutputFormat) -> str:
    """The two lines that load the dataset with Hugging Face `datasets`."""
    builder = "parquet" if output is OutputFormat.PARQUET else "json"
    files = dataset_uri.rstrip("/") + "/" + data_glob(output)
    return (
        "from datasets import load_dataset\n"
        f'pairs = load_dataset("{builder}", data_files="{files}", split="train")'
    )


def front_matter(manifest: PreferenceRunManifest, pairs: int) -> dict[str, Any]:
    return {
        "pretty_name": f"{manifest.metadata.name} (synthpref preference pairs)",
        "task_categories": ["text-generation"],
        "tags": ["preference", "dpo", "synthetic", "ultrafeedback", "synthpref"],
        "size_categories": [size_category(pairs)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": data_glob(manifest.spec.output.format)}],
            }
        ],
    }


def dataset_card(
    manifest: PreferenceRunManifest,
    summary: Mapping[str, Any],
    *,
    dataset_uri: str,
    report_uri: str,
    judge_served: list[str],
) -> str:
    spec = manifest.spec
    pairs = int(summary.get("pairs", 0))
    prompts = int((summary.get("prepare") or {}).get("prompts", 0))
    header = yaml.safe_dump(front_matter(manifest, pairs), sort_keys=False).rstrip("\n")
    models = "\n".join(
        f"- `{m.name}`: `{m.path}`"
        + (f" at revision `{m.revision}`" if m.revision else "")
        + f" ({m.backend.value}, temperature {m.sampling.temperature:g}, "
        f"max {m.sampling.max_tokens} tokens, seed {m.sampling.seed})"
        for m in spec.models
    )
    judge = spec.judge
    served = f" (replies said: {', '.join(judge_served)})" if judge_served else ""
    policy = spec.mix.on_policy_model
    mix = (
        f"on-policy pairs: `{policy}` against one other model"
        if policy
        else f"{spec.mix.responses_per_prompt} answers from distinct models per prompt"
    )
    losses = summary.get("losses") or {}
    lost = ", ".join(f"{cause} {n}" for cause, n in losses.items()) or "nothing"
    columns = "\n".join(f"| `{name}` | {kind} | {text} |" for name, kind, text in COLUMNS)
    return f"""---
# license: fill in the license your prompts and models allow (e.g. odc-by, apache-2.0)
{header}
---

# {manifest.metadata.name}

Synthetic preference pairs (prompt, chosen, rejected) made by synthpref the way the Tulu 3 /
UltraFeedback recipe makes them: {len(spec.models)} models answered {prompts} prompts, {mix} were
rated 1-5 by the judge on {", ".join(spec.mix.aspects)}, and the mean ratings were binarized into
{pairs} pairs.

## Load it

```python
{load_snippet(dataset_uri, spec.output.format)}
```

`load_dataset("<this folder>")` works too: the `configs` above point at the data files.

## How it was made

Models:

{models}

Judge: `{judge.model}`{served} through the {judge.backend.value} backend, temperature
{judge.temperature:g}, structured output {"on" if judge.structured_output else "off"};
answers shown {
        "in a recorded random order per aspect"
        if spec.mix.shuffle_answers
        else "in candidate order"
    }. Pairs: strategy `{spec.binarization.strategy.value}`, ties
`{spec.binarization.ties.value}`, minimum margin {spec.binarization.min_margin:g}.
Lost on the way: {lost}.

Everything needed to reproduce or audit the run (the resolved spec, model revisions and
weight-file hashes, judge settings, template hashes, seeds, package versions, times, counts) is
in `provenance.json` beside this card; plots of the data and of the judge's biases are in the
run report, `{report_uri}`.

## Columns

| column | type | meaning |
| --- | --- | --- |
{columns}

## License

Not set: fill in `license` above with what the prompts' and the models' licenses allow.
"""
