"""The churn service over HTTP: the champion's answers, strict about input, observable."""

import datetime as dt
import json
import math
import os
import re
import threading
import time

import bentoml
import dagster as dg
import duckdb
import httpx
import numpy as np
import pandas as pd
import pytest

from churn_assets.contract import EXAMPLE_RECORD, FEATURE_COLUMNS, LABEL_COLUMN, MAX_BATCH_RECORDS
from churn_assets.serve.assets import bento_model
from churn_assets.serve.onnx import ONNX_INPUTS
from churn_assets.settings import MODEL_NAME
from churn_assets.train.assets import read_split
from churn_assets.train.candidates import logistic_regression
from tests.conftest import SMALL_GRAPH_DAYS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def latest_features(exported) -> pd.DataFrame:
    platform, _ = exported
    return platform.frame(
        f"SELECT user_id, {', '.join(FEATURE_COLUMNS)} FROM marts.fct_user_features "
        "WHERE snapshot_date = (SELECT max(snapshot_date) FROM marts.fct_user_features) ORDER BY user_id"
    )


def _record(row: pd.Series) -> dict:
    return {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in FEATURE_COLUMNS}


@pytest.fixture(scope="module")
def champion(exported):
    platform, _ = exported
    registry = platform.resources["registry"]
    version = registry.champion().version
    return int(version), registry.load(version)


def test_predictions_over_http_equal_the_champions_in_process(service, latest_features, champion):
    version, model = champion
    sample = latest_features.head(25)
    expected = model.predict_proba(sample[list(FEATURE_COLUMNS)])[:, 1]

    single = [service.post("/predict", json={"features": _record(r)}).json() for _, r in sample.iterrows()]
    batch = service.post("/predict_batch", json={"records": [_record(r) for _, r in sample.iterrows()]}).json()
    by_user = service.post("/predict_user", json={"user_id": int(sample.user_id.iloc[0])}).json()

    np.testing.assert_allclose([p["churn_probability"] for p in single], expected, atol=1e-5)
    np.testing.assert_allclose([p["churn_probability"] for p in batch], expected, atol=1e-5)
    assert by_user["churn_probability"] == pytest.approx(expected[0], abs=1e-5)
    assert {p["model_version"] for p in [*single, *batch, by_user]} == {version}
    tiers = {p["risk_tier"] for p in single}
    assert tiers <= {"low", "medium", "high"}
    assert all((p["risk_tier"] == "high") == (p["churn_probability"] >= 0.6) for p in single)


def test_an_unknown_user_is_a_404_that_names_them(service):
    response = service.post("/predict_user", json={"user_id": 987654321})
    assert response.status_code == 404
    assert "987654321" in response.text


def _valid(latest_features) -> dict:
    return _record(latest_features.iloc[0])


def _with(latest_features, **changes) -> dict:
    return {"features": {**_valid(latest_features), **changes}}


def _without(latest_features, field: str) -> dict:
    record = _valid(latest_features)
    del record[field]
    return {"features": record}


MALFORMED = {
    "missing field": ("/predict", lambda f: _without(f, "tenure_days"), "tenure_days"),
    "extra field": ("/predict", lambda f: _with(f, favourite_colour="blue"), "favourite_colour"),
    "text for a count": ("/predict", lambda f: _with(f, lesson_views_7d="many"), "lesson_views_7d"),
    "fraction for a count": ("/predict", lambda f: _with(f, active_days_7d=2.5), "active_days_7d"),
    "negative count": ("/predict", lambda f: _with(f, support_tickets_30d=-1), "support_tickets_30d"),
    "out of range": ("/predict", lambda f: _with(f, active_days_7d=8), "active_days_7d"),
    "not a number": ("/predict", lambda f: _with(f, video_minutes_7d=math.nan), "video_minutes_7d"),
    "infinite": ("/predict", lambda f: _with(f, engagement_trend_7d_30d=math.inf), "engagement_trend_7d_30d"),
    "unknown plan": ("/predict", lambda f: _with(f, plan="platinum"), "plan"),
    "no wrapper key": ("/predict", lambda f: _valid(f), "features"),
    "empty batch": ("/predict_batch", lambda f: {"records": []}, "records"),
    "oversized batch": ("/predict_batch", lambda f: {"records": [_valid(f)] * (MAX_BATCH_RECORDS + 1)}, "records"),
    "bad record in a batch": ("/predict_batch", lambda f: {"records": [_valid(f), {**_valid(f), "plan": 3}]}, "plan"),
    "negative user id": ("/predict_user", lambda f: {"user_id": -5}, "user_id"),
    "text user id": ("/predict_user", lambda f: {"user_id": "ada"}, "user_id"),
    "numeric text for an amount": ("/predict", lambda f: _with(f, video_minutes_7d="3"), "video_minutes_7d"),
    "decimal text for an amount": ("/predict", lambda f: _with(f, video_minutes_7d="1.5"), "video_minutes_7d"),
    "true for an amount": ("/predict", lambda f: _with(f, engagement_trend_7d_30d=True), "engagement_trend_7d_30d"),
    "false for an amount": ("/predict", lambda f: _with(f, lesson_trend_7d_30d=False), "lesson_trend_7d_30d"),
    "true for a count": ("/predict", lambda f: _with(f, payments_30d=True), "payments_30d"),
    "numeric text user id": ("/predict_user", lambda f: {"user_id": "7"}, "user_id"),
    "float user id": ("/predict_user", lambda f: {"user_id": 7.0}, "user_id"),
    "exponent user id": ("/predict_user", lambda f: '{"user_id": 7e0}', "user_id"),
    "true as user id": ("/predict_user", lambda f: {"user_id": True}, "user_id"),
    "extra key beside features": ("/predict", lambda f: {**_with(f), "extra": 1}, "extra"),
    "extra key beside records": ("/predict_batch", lambda f: {"records": [_valid(f)], "extra": 1}, "extra"),
    "extra key beside user_id": ("/predict_user", lambda f: {"user_id": 7, "extra": 1}, "extra"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_requests_get_a_400_naming_the_field(service, latest_features, case):
    path, body, field = MALFORMED[case]
    payload = body(latest_features)
    if not isinstance(payload, str):
        payload = json.dumps(payload, allow_nan=True)
    response = service.post(path, content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert [field] in [error["loc"][-1:] for error in response.json()["detail"]], response.text


RECORD_FAULTS = {
    case: (body, field)
    for case, (path, body, field) in MALFORMED.items()
    if path == "/predict" and case not in ("no wrapper key", "extra key beside features")
}


@pytest.mark.parametrize("case", RECORD_FAULTS, ids=list(RECORD_FAULTS))
def test_a_record_predict_refuses_is_refused_in_a_batch_at_its_position(service, latest_features, case):
    body, field = RECORD_FAULTS[case]
    payload = {"records": [_valid(latest_features), body(latest_features)["features"], _valid(latest_features)]}
    response = service.post(
        "/predict_batch", content=json.dumps(payload, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["records", 1, field]], response.text


def test_malformed_json_is_a_400_naming_the_body(service):
    response = service.post("/predict", content=b'{"features": {', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_after_bad_requests_the_server_lives_and_logged_warnings_without_tracebacks(service):
    assert service.get("/livez").status_code == 200
    log = service.log_path.read_text()
    assert "Rejected request on /predict" in log
    assert "Traceback" not in log


def test_metrics_count_predictions_by_tier_and_version(service, latest_features, champion):
    version, _ = champion
    service.post("/predict_batch", json={"records": [_record(r) for _, r in latest_features.head(10).iterrows()]})
    metrics = service.get("/metrics").text
    lines = [line for line in metrics.splitlines() if line.startswith("churn_predictions_total{")]
    assert lines, metrics[:2000]
    assert all(f'model_version="{version}"' in line for line in lines)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= 10


def test_bentoml_request_metrics_count_every_answer_by_endpoint_and_status(service):
    """The APIs are answered inside BentoML's middleware, so its request metrics still see them."""

    def count(endpoint: str, status: int) -> float:
        pattern = (
            rf'^bentoml_service_request_total\{{endpoint="{endpoint}",http_response_code="{status}"[^}}]*\}} ([0-9.]+)$'
        )
        found = re.search(pattern, service.get("/metrics").text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = {(e, s): count(e, s) for e, s in (("/predict", 200), ("/predict", 400), ("/predict_batch", 200))}
    service.post("/predict", json={"features": EXAMPLE_RECORD})
    service.post("/predict", json={"features": {**EXAMPLE_RECORD, "plan": "gold"}})
    service.post("/predict_batch", json={"records": [EXAMPLE_RECORD, EXAMPLE_RECORD]})
    # Each worker keeps its own counts and /metrics merges them, so every request shows exactly once.
    assert {key: count(*key) - value for key, value in before.items()} == {
        ("/predict", 200): 1,
        ("/predict", 400): 1,
        ("/predict_batch", 200): 1,
    }


def test_the_openapi_document_describes_the_feature_schema_and_the_answers(service):
    spec = service.get("/docs.json").json()
    assert {"/predict", "/predict_batch", "/predict_user"} <= set(spec["paths"])
    assert "days_since_last_activity" in json.dumps(spec)

    def answer(path: str) -> dict:
        return spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]

    assert set(answer("/predict")["required"]) == {"churn_probability", "risk_tier", "model_version"}
    assert answer("/predict_batch")["type"] == "array"
    assert {"user_id", "snapshot_date"} <= set(answer("/predict_user")["required"])


def test_answers_arrive_whole_with_their_length_not_chunked(service, latest_features):
    response = service.post("/predict", json={"features": _valid(latest_features)})

    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers


SWAP_WITHIN_S = 10
"""A new export or snapshot is served within this long: one poll (1 s here) plus loading it."""


def _wait_for(condition, timeout_s: float = SWAP_WITHIN_S) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s}s"
        time.sleep(0.1)
    return time.monotonic() - started


class _Traffic(threading.Thread):
    """A client sending /predict all through a swap, recording every answer."""

    def __init__(self, base_url: str, body: dict):
        super().__init__(daemon=True)
        self.base_url, self.body = base_url, body
        self.stop, self.errors, self.versions = threading.Event(), [], []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/predict", json=self.body)
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))
                    continue
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code}: {response.text}")
                else:
                    self.versions.append(response.json()["model_version"])


def test_a_promoted_and_a_rolled_back_champion_are_served_without_a_restart(
    exported, latest_features, register_model, start_service
):
    platform, _ = exported
    registry = platform.resources["registry"]
    previous = int(registry.champion().version)
    train = read_split("train")
    newer = register_model(registry, logistic_regression(7).fit(train[list(FEATURE_COLUMNS)], train[LABEL_COLUMN]))
    body = {"features": _valid(latest_features)}
    with start_service(f"{MODEL_NAME}:latest", platform.data_dir) as client:

        def served(version: int):
            return lambda: client.post("/predict", json=body).json()["model_version"] == version

        traffic = _Traffic(str(client.base_url), body)
        traffic.start()
        try:
            registry.promote(newer)
            dg.materialize([bento_model], resources=platform.resources)
            promoted_in = _wait_for(served(newer))
            registry.promote(previous)
            dg.materialize([bento_model], resources=platform.resources)
            rolled_back_in = _wait_for(served(previous))
        finally:
            traffic.stop.set()
            traffic.join()
            registry.promote(previous)
            dg.materialize([bento_model], resources=platform.resources)
        info = client.get("/model").json()

    assert traffic.errors == [], f"{len(traffic.errors)} failed of {len(traffic.versions)}"
    assert set(traffic.versions) == {previous, newer} and len(traffic.versions) > 50
    assert max(promoted_in, rolled_back_in) < SWAP_WITHIN_S
    assert info["model_version"] == previous


def test_model_info_says_what_is_served_and_how_fresh(service, exported, champion):
    platform, tag = exported
    version, _ = champion
    info = service.get("/model").json()

    assert info["status"] == "ok" and info["degraded_because"] == []
    assert (info["model_version"], info["bento_model"]) == (version, tag)
    assert info["mlflow_run_id"] == platform.resources["registry"].champion().tags["run_id"]
    assert 0.5 < info["holdout_metrics"]["roc_auc"] <= 1
    assert info["risk_thresholds"] == {"medium": 0.3, "high": 0.6}
    assert 0 <= info["model_age_seconds"] < 3600
    assert info["feature_snapshot_date"] == str(SMALL_GRAPH_DAYS[1])
    assert (
        info["feature_snapshot_users"]
        == platform.query(
            f"SELECT count(*) FROM marts.fct_user_features WHERE snapshot_date = DATE '{SMALL_GRAPH_DAYS[1]}'"
        )[0][0]
    )
    metrics = service.get("/metrics").text
    assert re.search(r"^churn_model_age_seconds(\{[^}]*\})? [0-9.e+]+$", metrics, re.MULTILINE)
    assert re.search(r"^churn_feature_snapshot_age_seconds(\{[^}]*\})? [0-9.e+]+$", metrics, re.MULTILINE)


def test_a_new_feature_snapshot_is_answered_from_and_an_old_one_is_reported_degraded(
    service, exported, latest_features
):
    platform, _ = exported
    path = platform.settings.online_features_path
    original = path.read_bytes()
    user = int(latest_features.user_id.iloc[0])
    next_day = SMALL_GRAPH_DAYS[1] + dt.timedelta(days=1)
    staged = path.with_name("next.parquet")
    try:
        with duckdb.connect() as con:
            con.execute(
                f"COPY (SELECT * REPLACE (DATE '{next_day}' AS snapshot_date) FROM read_parquet('{path}')) TO '{staged}'"
            )
        staged.replace(path)
        _wait_for(
            lambda: service.post("/predict_user", json={"user_id": user}).json()["snapshot_date"] == str(next_day)
        )

        three_days_ago = time.time() - 3 * 24 * 3600
        os.utime(path, (three_days_ago, three_days_ago))
        _wait_for(lambda: service.get("/model").json()["status"] == "degraded")
        info = service.get("/model").json()
        assert info["degraded_because"] == ["the feature snapshot was published over 50 h ago"]
        assert info["feature_snapshot_age_seconds"] >= 3 * 24 * 3600
        assert service.get("/readyz").status_code == 200, "a stale snapshot still serves"
    finally:
        staged.write_bytes(original)
        staged.replace(path)
    _wait_for(lambda: service.get("/model").json()["status"] == "ok")


def test_an_export_in_an_older_onnx_layout_is_compiled_again(exported):
    platform, _ = exported
    current = bentoml.models.get(f"{MODEL_NAME}:latest")
    bentoml.sklearn.save_model(
        MODEL_NAME,
        bentoml.sklearn.load_model(current),
        labels=current.info.labels,
        metadata={**current.info.metadata, "onnx_inputs": list(FEATURE_COLUMNS)},
        custom_objects=current.custom_objects,
    )

    result = dg.materialize([bento_model], resources=platform.resources)

    assert result.asset_materializations_for_node("bento_model")[0].metadata["exported"].value is True
    assert bentoml.models.get(f"{MODEL_NAME}:latest").info.metadata["onnx_inputs"] == list(ONNX_INPUTS)


def test_reexporting_an_unchanged_champion_creates_no_model(exported):
    platform, _tag = exported
    result = dg.materialize([bento_model], resources=platform.resources)
    metadata = result.asset_materializations_for_node("bento_model")[0].metadata
    assert metadata["exported"].value is False
