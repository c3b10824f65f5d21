"""The chart's NOTES (what `helm install` prints) name what `kubectl get prun` prints: the CRD's
printer columns, without and with `-o wide`, and how the endpoint allow-list works."""

from __future__ import annotations

import re
from pathlib import Path

from synthpref_operator.crd import crd

NOTES = Path(__file__).resolve().parents[2] / "charts" / "synthpref" / "templates" / "NOTES.txt"


def columns(priority: int) -> list[str]:
    version = crd()["spec"]["versions"][0]
    # NAME comes first in every table; the CRD lists only the columns after it.
    names = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    wide = [c["name"].upper() for c in version["additionalPrinterColumns"] if c.get("priority")]
    return ["NAME", *[n for n in names if n not in wide]] if priority == 0 else wide


def comment_of(command: str) -> list[str]:
    text = NOTES.read_text(encoding="utf-8")
    match = re.search(rf"^  {re.escape(command)}.*?# (.*)$", text, re.M)
    assert match is not None, f"NOTES: no line for {command!r}"
    return [word.strip(" ,") for word in match.group(1).removeprefix("and ").split(",")]


def test_notes_list_the_columns_kubectl_prints() -> None:
    assert comment_of("kubectl get prun -n {{ $ns }} -w") == columns(0)
    assert comment_of("kubectl get prun -n {{ $ns }} -o wide") == columns(1)
    assert columns(1) == ["JUDGE", "COST", "BLOCKED", "MESSAGE"]


def test_notes_say_which_endpoints_are_always_allowed() -> None:
    text = " ".join(NOTES.read_text(encoding="utf-8").split())
    assert "storage.endpointUrl" in text and "judge.openai.baseUrl" in text
    assert "OPENAI_BASE_URL and AWS_ENDPOINT_URL_S3 (operator.env, workers.env), which are " in text
    assert "always allowed" in text and "(EndpointNotAllowed)" in text
    assert "synthpref report open NAME" in text
