"""schemathesis against the service: requests generated from its own OpenAPI schema, to every
operation, against a real server on 127.0.0.1. No answer may be a server error (5xx), use a
status code the schema does not document, or have a body outside the schema.

The number of examples per operation is bounded (``EXAMPLES``) so that the run stays short; the
number of requests made is printed (``pytest -s``) and checked.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs pip install schemathesis")
pytest.importorskip("fastapi", reason="needs pip install fastapi")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from gpner.serve.app import create_app  # noqa: E402
from gpner.serve.limits import Limits  # noqa: E402
from tests.serve_helpers import running_server  # noqa: E402

EXAMPLES = 150  # per operation
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
_requests = {}


@pytest.fixture(scope="module")
def service(served_model):
    app = create_app(served_model, Limits(max_texts=8, max_chars=300, max_request_bytes=8192))
    with running_server(app) as url:
        yield url


@pytest.fixture
def api_schema(service):
    return schemathesis.openapi.from_url(f"{service}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_within_its_schema(case):
    key = f"{case.method} {case.path}"
    _requests[key] = _requests.get(key, 0) + 1
    case.call_and_validate(checks=CHECKS, timeout=120)


def test_the_fuzzer_reached_every_operation(service, capsys):
    import httpx

    paths = httpx.get(f"{service}/openapi.json").json()["paths"]
    operations = {f"{m.upper()} {p}" for p, methods in paths.items() for m in methods}
    # schemathesis also tries the methods an operation lacks (answered 405)
    assert operations <= set(_requests), (sorted(_requests), sorted(operations))
    with capsys.disabled():
        shown = {k: n for k, n in sorted(_requests.items()) if k in operations}
        print(f"\nschemathesis: {sum(_requests.values())} requests, {shown} to the operations")
