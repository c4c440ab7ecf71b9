"""/predict_batch answers exactly as if pydantic alone validated it, at msgspec's speed.

``DirectApis`` decodes a batch with msgspec (``BatchRecords``) and turns to pydantic's
``BatchRequest`` only when msgspec refuses: pydantic words the 400, or accepts after all. That is
sound only if msgspec never accepts what pydantic refuses, nor reads a value differently. These
specs generate bodies, most of them nearly valid, as JSON text (where ``7.0``, ``7e0``, ``-0``,
``1e400`` and ``NaN`` differ), and compare what the API would be given with pydantic's reading.
"""

from __future__ import annotations

import math

import msgspec
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bento.service import FAST_DECODING, BatchRecords, BatchRequest, ChurnService
from bento.surface import DirectApis
from churn_assets.contract import AMOUNT_FEATURES, COUNT_FEATURES, EXAMPLE_RECORD, MAX_BATCH_RECORDS, PLANS

API = ChurnService.apis["predict_batch"]
DIRECT = DirectApis(None, ChurnService, fast=FAST_DECODING)
DECODER = msgspec.json.Decoder(BatchRecords)

WRONG_TYPES = [
    '"3"',
    '"1.5"',
    "true",
    "false",
    "null",
    "[]",
    "{}",
    '""',
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
]


def _count_tokens(upper: int) -> list[str]:
    return [str(upper), str(upper + 1), "-1", "0", "-0", f"{upper}.0", "7e0", "1E1", str(2**63), str(-(2**63) - 1)]


def _amount_tokens(name: str) -> list[str]:
    largest = round(AMOUNT_FEATURES[name], 4) + 1e-4
    return [repr(largest), repr(math.nextafter(largest, math.inf)), "0", "-0.0", "-1e-300", "1e-400", "3", "1.5e1"]


@st.composite
def field_token(draw, name: str) -> str:
    """A valid value nineteen times in twenty, else a bound, a spelling or a type that may not be."""
    if draw(st.integers(0, 19)):
        if name in COUNT_FEATURES:
            return str(draw(st.integers(0, COUNT_FEATURES[name])))
        if name in AMOUNT_FEATURES:
            return repr(draw(st.floats(0, AMOUNT_FEATURES[name], allow_nan=False)))
        return f'"{draw(st.sampled_from(PLANS))}"'
    if name in COUNT_FEATURES:
        edges = _count_tokens(COUNT_FEATURES[name])
    elif name in AMOUNT_FEATURES:
        edges = _amount_tokens(name)
    else:
        edges = ['"Pro"', '"pro "', '"platinum"', '"p\\u0072o"', "3"]
    return draw(st.sampled_from(edges + WRONG_TYPES))


@st.composite
def record_text(draw) -> str:
    items = [(f'"{name}"', draw(field_token(name))) for name in EXAMPLE_RECORD if draw(st.integers(0, 49))]
    if not draw(st.integers(0, 19)):
        items.append(
            (
                draw(st.sampled_from(['"extra"', '"tenure_days"', '"plan"', '"Plan"'])),
                draw(st.sampled_from(["1", '"pro"'])),
            )
        )
    items = draw(st.permutations(items))
    return "{" + ",".join(f"{key}:{value}" for key, value in items) + "}"


@st.composite
def batch_text(draw) -> str:
    records = draw(st.lists(record_text(), min_size=0, max_size=3))
    members = [f'"records":[{",".join(records)}]']
    if not draw(st.integers(0, 19)):
        members.append(draw(st.sampled_from(['"extra":1', '"records":[]', '"records":null'])))
    return "{" + ",".join(members) + "}"


def _pydantic(body: bytes) -> list[dict] | None:
    try:
        return BatchRequest.model_validate_json(body).records
    except pydantic.ValidationError:
        return None


def _msgspec(body: bytes) -> list[dict] | None:
    try:
        return msgspec.to_builtins(DECODER.decode(body))["records"]
    except ValueError:
        return None


def _given_to_the_api(body: bytes) -> list[dict] | None:
    try:
        return msgspec.to_builtins(DIRECT._arguments(API, body)["records"])
    except pydantic.ValidationError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_text())
def test_the_api_is_given_what_pydantic_reads_and_nothing_it_refuses(text):
    body = text.encode()
    assert _given_to_the_api(body) == _pydantic(body), text


def test_a_body_only_pydantic_accepts_is_still_answered():
    """A key given twice: msgspec checks its first value, pydantic only the last one."""
    body = msgspec.json.encode({"records": [EXAMPLE_RECORD]})[:-3] + b',"tenure_days":"pro","tenure_days":5}]}'
    assert _msgspec(body) is None
    assert _given_to_the_api(body) == [{**EXAMPLE_RECORD, "tenure_days": 5}]


@st.composite
def valid_record(draw) -> dict:
    record = {name: draw(st.integers(0, upper)) for name, upper in COUNT_FEATURES.items()}
    record |= {name: draw(st.floats(0, upper, allow_nan=False)) for name, upper in AMOUNT_FEATURES.items()}
    record["plan"] = draw(st.sampled_from(PLANS))
    return record


@settings(max_examples=100, deadline=None)
@given(st.lists(valid_record(), min_size=1, max_size=5))
def test_every_valid_batch_takes_the_fast_path(records):
    body = msgspec.json.encode({"records": records})
    assert _msgspec(body) == records == _pydantic(body)


@pytest.mark.parametrize("count, accepted", [(MAX_BATCH_RECORDS, True), (MAX_BATCH_RECORDS + 1, False)])
def test_both_take_a_full_batch_and_refuse_one_record_more(count, accepted):
    body = msgspec.json.encode({"records": [EXAMPLE_RECORD] * count})
    assert (_msgspec(body) is not None, _pydantic(body) is not None) == (accepted, accepted)


@pytest.mark.parametrize(
    "body", [b"", b"[]", b"null", b'\xef\xbb\xbf{"records":[]}', b'{"records":[{"\xff":1}]}', b'{"records":[]} x']
)
def test_both_refuse_what_is_not_one_json_object(body):
    assert _msgspec(body) is None and _pydantic(body) is None
