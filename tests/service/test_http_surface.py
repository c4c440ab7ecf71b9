"""The service's front door: what it refuses, with which status, and what it documents and logs."""

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bento.surface import (
    LOGGED_REASON_CHARS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    REJECTIONS_LOGGED_PER_MINUTE,
    RejectionLog,
)
from churn_assets.contract import EXAMPLE_RECORD, FEATURE_COLUMNS, MAX_BATCH_RECORDS

pytestmark = pytest.mark.slow

POSTS = ("/predict", "/predict_batch", "/predict_user")


@pytest.fixture(scope="module")
def record(exported) -> dict:
    platform, _ = exported
    row = platform.frame(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM marts.fct_user_features LIMIT 1").iloc[0]
    return {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in FEATURE_COLUMNS}


NOT_JSON = {
    "form": {"data": {"user_id": "7"}},
    "multipart": {"files": {"user_id": ("user_id", b"7")}},
    "multipart without a boundary": {"content": b"7", "headers": {"content-type": "multipart/form-data"}},
    "plain text": {"content": b'{"user_id": 7}', "headers": {"content-type": "text/plain"}},
    "no content type": {"content": b'{"user_id": 7}'},
}


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("body", NOT_JSON, ids=list(NOT_JSON))
def test_a_body_that_is_not_json_is_a_415_naming_the_header(service, path, body):
    response = service.post(path, **NOT_JSON[body])

    assert response.status_code == 415, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "content-type"]


def test_json_with_a_charset_is_json(service, record):
    response = service.post(
        "/predict",
        content=json.dumps({"features": record}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_is_a_413_whether_or_not_it_says_its_length(service):
    oversized = b'{"records": [' + b"0," * (MAX_BODY_BYTES // 2) + b"0]}"

    def chunks():
        for start in range(0, len(oversized), 64 * 1024):
            yield oversized[start : start + 64 * 1024]

    declared = service.post("/predict_batch", content=oversized, headers={"content-type": "application/json"})
    streamed = service.post("/predict_batch", content=chunks(), headers={"content-type": "application/json"})

    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["detail"][0]["loc"] == ["body"]
    assert "content-length" not in streamed.request.headers


def test_the_largest_batch_fits_under_the_body_limit_even_pretty_printed(service, record):
    body = json.dumps({"records": [record] * MAX_BATCH_RECORDS}, indent=4).encode()

    response = service.post("/predict_batch", content=body, headers={"content-type": "application/json"})

    assert len(body) < MAX_BODY_BYTES
    assert response.status_code == 200 and len(response.json()) == MAX_BATCH_RECORDS


def test_headers_over_the_limit_are_a_431(service):
    response = service.get("/livez", headers={"x-padding": "a" * MAX_HEADER_BYTES})
    assert response.status_code == 431
    assert response.json()["detail"][0]["loc"] == ["header"]


def test_a_get_on_a_prediction_endpoint_is_a_405_that_says_post(service):
    response = service.get("/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_unknown_paths_are_a_404_and_never_a_new_metrics_series(service):
    paths = [f"/probe-{uuid.uuid4().hex[:12]}" for _ in range(30)]
    before = _series(service.get("/metrics").text)

    responses = [service.get(path) for path in paths]

    metrics = service.get("/metrics").text
    assert {r.status_code for r in responses} == {404}
    assert responses[0].json()["detail"][0]["loc"] == ["path"]
    assert not any(path in metrics for path in paths)
    assert _series(metrics) - before <= {'churn_requests_refused_total{reason="unknown_path"}'}
    refused = re.search(r'^churn_requests_refused_total\{reason="unknown_path"\} ([0-9.]+)$', metrics, re.MULTILINE)
    assert refused and float(refused.group(1)) >= len(paths)


def _series(metrics: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in metrics.splitlines() if line and not line.startswith("#")}


@pytest.fixture
def fresh_service(exported, start_service):
    """A service of its own, whose log holds only this test's requests."""
    platform, tag = exported
    with start_service(tag, platform.data_dir) as client:
        yield client


def test_the_log_escapes_client_text_and_stays_short_under_a_flood(fresh_service, record):
    forged = "2026-01-01T00:00:00+0000 [ERROR] [entry_service:churn_service:1] forged"
    fresh_service.post("/predict", json={"features": {**record, f"x\n{forged}": 1}})
    fresh_service.get(f"/nope%0A{forged.replace(' ', '%20')}")
    fresh_service.post("/predict", json={"features": {**record, **{f"unknown_{i}": i for i in range(5000)}}})
    for _ in range(199):
        fresh_service.post("/predict_user", json={"user_id": "seven"})

    log = fresh_service.log_path.read_text()
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert sum("\\n" + forged in line for line in log.splitlines()) == 2
    assert "Traceback" not in log
    assert log.count("Rejected request on") == REJECTIONS_LOGGED_PER_MINUTE
    assert max(len(line) for line in log.splitlines() if "Rejected request" in line) < LOGGED_REASON_CHARS + 200
    assert "further ones are counted in churn_requests_refused_total" in log
    metrics = fresh_service.get("/metrics").text
    invalid = re.search(r'^churn_requests_refused_total\{reason="invalid_body"\} ([0-9.]+)$', metrics, re.MULTILINE)
    assert invalid and float(invalid.group(1)) >= 201


def test_past_the_limit_rejections_are_summarised_when_the_minute_is_over(caplog):
    now = [0.0]
    log = RejectionLog(per_minute=3, clock=lambda: now[0])

    first_minute = [log.allow() for _ in range(10)]
    now[0] = 61.0
    next_minute = log.allow()

    assert first_minute == [True] * 3 + [False] * 7
    assert next_minute is True
    assert "7 more rejected requests in the last minute were not logged" in caplog.text


def test_the_swagger_page_sends_the_browser_to_no_other_host(service):
    page = service.get("/")
    description = service.get("/docs.json").json()["info"]["description"]

    assert page.status_code == 200
    assert "googletagmanager" not in page.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "://" not in description
    for asset in re.findall(r"""(?:src|href)="\./([^"]+)\"""", page.text):
        assert service.get(f"/{asset}").status_code == 200, asset


def test_the_openapi_document_requires_bodies_and_documents_every_refusal(service):
    spec = service.get("/docs.json").json()

    for path in POSTS:
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        for status in ("400", "405", "413", "415", "431", "500"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }
    assert {"404", "503"} <= set(spec["paths"]["/predict_user"]["post"]["responses"])
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert '"exclusiveMinimum": 0' not in json.dumps(spec)
    assert spec["info"]["version"] == "source (not a built Bento)"


def test_a_schema_driven_fuzzer_finds_no_server_error_and_no_answer_off_the_schema(service, tmp_path):
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{service.base_url}/docs.json",
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261201",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout


def test_every_feature_field_carries_its_dbt_definition_and_an_example_that_is_answered(service):
    properties = service.get("/docs.json").json()["components"]["schemas"]["FeatureRecord"]["properties"]
    example = {name: field["example"] for name, field in properties.items()}

    response = service.post("/predict", json={"features": example})

    assert list(properties) == list(FEATURE_COLUMNS)
    assert properties["tenure_days"]["description"] == "Days since signup."
    assert all(len(field.get("description", "")) > 10 for field in properties.values())
    assert example == EXAMPLE_RECORD
    assert response.status_code == 200, response.text


def test_the_predict_user_example_is_a_user_of_the_served_snapshot_and_is_answered(service):
    operation = service.get("/docs.json").json()["paths"]["/predict_user"]["post"]
    example = operation["requestBody"]["content"]["application/json"]["example"]

    response = service.post("/predict_user", json=example)

    assert example == {"user_id": service.get("/model").json()["example_user_id"]}
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == example["user_id"]
