"""The console's operation results: the list, one operation's charts and table, the phase
selector, the feedback behind each figure, the CSV, and the auditor's scope."""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any

from tests.console.conftest import CSP, sign_in, text_of
from tests.results.conftest import ALPHA, BRAVO, Scene, generate
from tests.results.conftest import scene as scene  # the results scene, here too


def _links(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]+/feedback[^"]*)"', page)]


def test_an_auditor_follows_a_figure_to_its_feedback(
    client: Any, scene: Scene, token_for: Any
) -> None:
    generate(scene, 60, seed=3)
    sign_in(client, token_for("auditor"))
    listing = client.get("/console/operations")
    assert listing.status_code == 200
    assert f'href="/console/operations/{ALPHA}"' in listing.text
    assert 'href="/console/operations"' in listing.text  # the navigation's link
    page = client.get(f"/console/operations/{ALPHA}")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith(CSP)
    assert "<script>" not in page.text
    assert "style=" not in page.text
    api = client.get(
        f"/v1/operations/{ALPHA}/results", headers=scene.exchange.agency_headers("VN-GDC")
    )
    body = api.json()
    assert f'id="results-total">{body["total"]}<' in page.text
    # A chart per dimension, each bar a link to its feedback; the phase selector.
    assert page.text.count('<svg class="chart"') == 6
    for p in ("alpha-1", "alpha-2", "outside"):
        assert f'href="/console/operations/{ALPHA}?phase={p}"' in page.text
    # Every linked figure lists as many messages as it counts.
    figures = _links(page.text)
    assert len(figures) > 20
    by_agency = {r["value"]: r["count"] for r in body["by_agency"]}
    for href in figures:
        if "agency=" in href and "&" not in href.split("?", 1)[1]:
            agency = href.rsplit("=", 1)[1]
            listed = client.get(href)
            assert listed.status_code == 200, href
            total = re.search(r'id="feedback-total">(\d+)<', listed.text)
            assert total is not None
            assert int(total.group(1)) == by_agency[agency]
    # The grouped table's first row (the largest group) and its feedback page with leaf links.
    first = re.search(r'<td class="num"><a href="([^"]+)">(\d+)</a></td>', page.text)
    assert first is not None
    listed = client.get(html.unescape(first.group(1)))
    assert listed.text.count('<a class="mid"') == int(first.group(2))
    assert "/console/log?index=" in listed.text or "not sequenced yet" in listed.text


def test_a_phase_and_the_csv(client: Any, scene: Scene, token_for: Any) -> None:
    generate(scene, 60, seed=4)
    sign_in(client, token_for("auditor"))
    page = client.get(f"/console/operations/{ALPHA}", params={"phase": "alpha-1"})
    assert page.status_code == 200
    assert 'aria-current="true">alpha-1</a>' in page.text
    api = client.get(
        f"/v1/operations/{ALPHA}/results",
        params={"phase": "alpha-1"},
        headers=scene.exchange.agency_headers("VN-GDC"),
    ).json()
    assert f'id="results-total">{api["total"]}<' in page.text
    assert f'href="/console/operations/{ALPHA}/results.csv?phase=alpha-1"' in page.text
    download = client.get(f"/console/operations/{ALPHA}/results.csv", params={"phase": "alpha-1"})
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert sum(int(r["count"]) for r in rows) == api["total"]
    assert {r["phase"] for r in rows} == {"alpha-1"}


def test_an_auditor_sees_only_what_it_oversees(client: Any, scene: Scene, token_for: Any) -> None:
    generate(scene, 40, seed=5)
    sign_in(client, token_for("auditor", audit_agencies=["TH-CUS"]))
    listing = client.get("/console/operations")
    assert f"/console/operations/{ALPHA}" in listing.text
    assert f"/console/operations/{BRAVO}" not in listing.text  # TH-CUS is no member
    page = client.get(f"/console/operations/{ALPHA}")
    assert "sent by or to the agencies you oversee (TH-CUS) only" in text_of(page.text)
    for path in (
        f"/console/operations/{BRAVO}",
        f"/console/operations/{BRAVO}/feedback",
        f"/console/operations/{BRAVO}/results.csv",
        "/console/operations/NO-SUCH-OP",
    ):
        refused = client.get(path)
        assert refused.status_code == 404, path
        assert "text/html" in refused.headers["content-type"]


def test_bad_filters_are_an_html_page(client: Any, scene: Scene, token_for: Any) -> None:
    sign_in(client, token_for("auditor"))
    for query in ({"phase": "nope"}, {"week": "2026-W99"}, {"cursor": "x"}):
        refused = client.get(f"/console/operations/{ALPHA}/feedback", params=query)
        assert refused.status_code == 422, query
        assert "text/html" in refused.headers["content-type"]
