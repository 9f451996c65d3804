"""Issue 12, item 4: the app's OpenAPI schema is served and true. schemathesis generates requests for every
operation of the schema (whatever routes the app has when the test runs), valid ones and, where an operation
takes parameters or a body, invalid ones, sends them with the API key to a real server (uvicorn on 127.0.0.1
over a throwaway store of coco128 images, no job worker) and checks each answer: no 5xx, its status declared, its
body valid against the declared schema (every error a string ``detail``), invalid input refused with a 4xx. The
budget is fixed (``MAX_EXAMPLES`` per operation, derandomized: the same cases every run); the counts are printed.

Random identifiers only reach a route's 404; so path parameters are also drawn from the identifiers the store
really holds (listed before the run, and taken from every answer during it), by the resource named in the path
segment before the parameter (``/tasks/{uid}/`` takes task uids; ``/datasets/{owner}/{slug}/`` owners and
slugs), and ``project`` query parameters and body references likewise: success answers are checked too. DELETEs
run last.

What a route must declare to pass (``server/schemas.py``): a ``response_model`` for each JSON success answer
(a second success status, e.g. 200 beside 201, in ``responses=`` with its model; a non-JSON answer as
``responses={200: {"content": {"<media type>": {}}}}``), ``responses=errors(...)`` for every error status it can
give beyond the app's 401/422/500/503 (400 for a bad value or cursor, 404 for an unknown id, 409...), and a
DELETE 204 with no body.
"""

from __future__ import annotations

import collections
import importlib
import pkgutil
import re
import time
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
schemathesis = pytest.importorskip("schemathesis", reason="a test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Flaky  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from avala_infer import Avala  # noqa: E402
from avala_infer.server import routes  # noqa: E402
from avala_infer.server.app import API_PREFIX, create_app  # noqa: E402
from tests.server_helpers import KEY, ThreadServer, make_store  # noqa: E402

MAX_EXAMPLES = 20  # per operation
HEADERS = {"X-Avala-Api-Key": KEY}
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, negative_data_rejection]
# path segments whose operations get random identifiers only: a real inference provider's `test/` loads a model
# and predicts, seconds a call on this CPU, and tells nothing more about the schema
RANDOM_IDS_ONLY = re.compile(r"/inference-providers/\{[^}]+\}/test/$")
PARAMETER = re.compile(r"\{([^}]+)\}")
# a path parameter -> the field of the listed objects it takes (default: uid)
FIELD_OF = {"owner": "owner_name", "slug": "slug"}
# a JSON body's field -> the resource whose uids it takes
BODY_REFERENCES = {"project": "projects", "dataset": "datasets", "execution": "executions"}
# the operations whose success answers must have been checked: the routes this test's store has data for
MUST_SUCCEED = [
    "GET /users/me/",
    "GET /organizations/",
    "GET /organizations/{slug}/",
    "GET /users/me/projects/",
    "GET /users/me/projects/{uid}/",
    "GET /tasks/",
    "GET /tasks/{uid}/",
    "GET /datasets/",
    "GET /datasets/{uid}/",
    "GET /datasets/{owner}/{slug}/",
    "GET /datasets/{owner}/{slug}/items/",
    "GET /datasets/{owner}/{slug}/items/{item_uid}/",
    "GET /media/items/{item_uid}/",
    "POST /projects/{uid}/auto-label/",
    "GET /auto-label-jobs/",
    "GET /auto-label-jobs/{uid}/",
    "DELETE /auto-label-jobs/{uid}/",
]


class Known:
    """The identifiers the store holds, by resource (the path segment naming it) and field, in first-seen
    order: filled by listing before the run and from every JSON answer during it."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))

    def record(self, path: str, body: Any) -> None:
        """Take the identifiers out of ``body``, an answer of ``path`` (a template)."""
        segment = static_segments(path)[-1]
        objects = body.get("results", [body]) if isinstance(body, dict) else []
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            for field in ("uid", "slug", "owner_name"):
                value = obj.get(field)
                if isinstance(value, str) and value not in self.values[segment][field]:
                    self.values[segment][field].append(value)

    def uids(self, segment: str) -> list[str]:
        return list(self.values[segment]["uid"])

    def choices(self, path: str, name: str) -> list[str]:
        """The known values of path parameter ``name`` of ``path``."""
        before = path.split("{" + name + "}")[0]
        segments = static_segments(before)
        return list(self.values[segments[-1]][FIELD_OF.get(name, "uid")]) if segments else []


def static_segments(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s and not s.startswith("{")]


def template(operation) -> str:
    return operation.path[len(API_PREFIX) :] if operation.path.startswith(API_PREFIX) else operation.path


def with_known_values(operation, known: Known):
    """The operation's cases, half of them with path parameters, ``project`` and body references the store
    holds."""
    strategy = operation.as_strategy(headers=HEADERS)  # the key as a fixed header: never negated
    if operation.path_parameters or operation.query or operation.body:  # something to get wrong
        strategy = st.one_of(strategy, operation.as_strategy(GenerationMode.NEGATIVE, headers=HEADERS))
    path = template(operation)
    names = PARAMETER.findall(path)
    has_project = any(p.name == "project" for p in operation.query)
    if RANDOM_IDS_ONLY.search(path):
        return strategy

    def swap(case):
        params = {n: st.sampled_from(v) for n in names if (v := known.choices(path, n))}
        body = case.body if isinstance(case.body, dict) else {}
        refs = {f: st.sampled_from(v) for f, seg in BODY_REFERENCES.items() if f in body and (v := known.uids(seg))}
        projects = known.uids("projects")
        query = st.sampled_from(projects) if has_project and projects else st.none()
        if not (params or refs or has_project):
            return st.just(case)

        def apply(picked):
            path_values, body_values, project = picked
            case.path_parameters = {**(case.path_parameters or {}), **path_values}
            if body_values:
                case.body = {**case.body, **body_values}
            if project is not None:
                case.query = {**(case.query or {}), "project": project}
            return case

        real = st.tuples(st.fixed_dictionaries(params), st.fixed_dictionaries(refs), query).map(apply)
        return st.one_of(st.just(case), real)

    return strategy.flatmap(swap)


@pytest.fixture(scope="module")
def served(tmp_path_factory, val_images):
    """A throwaway store (4 images, a pending job and a cancelled one) served without a job worker."""
    home = tmp_path_factory.mktemp("openapi") / "home"
    project = make_store(home, sorted(val_images.glob("*.jpg"))[:4])
    with Avala(home=home, worker=False) as local:
        local.auto_label_jobs.create(project)
        local.auto_label_jobs.cancel(local.auto_label_jobs.create(project, confidence_threshold=0.5).uid)
    app = create_app(home, [KEY], worker=False)
    server = ThreadServer(app).start()
    try:
        yield app, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def seed(schema, base: str, known: Known) -> None:
    """List every collection (nested ones with the parameters known by then) to learn the store's ids."""
    gets = [op for op in (r.ok() for r in schema.get_all_operations()) if op.method.upper() == "GET"]
    for operation in sorted(gets, key=lambda op: len(PARAMETER.findall(op.path))):
        path = template(operation)
        if path.rstrip("/").endswith("}"):
            continue
        filled = path
        for name in PARAMETER.findall(path):
            values = known.choices(path, name)
            if not values:
                break
            filled = filled.replace("{" + name + "}", values[0])
        else:
            answer = httpx.get(base + API_PREFIX + filled, headers=HEADERS, timeout=30)
            if answer.status_code == 200 and answer.headers.get("content-type", "").startswith("application/json"):
                known.record(path, answer.json())


def fuzz(operation, label: str, base: str, known: Known, cases, statuses) -> None:
    """Send ``MAX_EXAMPLES`` cases of ``operation`` and run the checks on each answer."""

    @given(case=with_known_values(operation, known))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call_and_validate(base_url=base, headers=HEADERS, checks=CHECKS, timeout=30)
        cases[label] += 1
        statuses[label][response.status_code] += 1
        if 200 <= response.status_code < 300 and "json" in response.headers.get("content-type", [""])[0]:
            known.record(template(operation), response.json())

    run()


def test_schemathesis_every_operation_answers_as_its_schema_says(served, capsys):
    app, base = served
    schema = schemathesis.openapi.from_url(base + API_PREFIX + "/openapi.json")
    known = Known()
    seed(schema, base, known)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: the others keep real ids
    assert len(operations) == sum(len(methods) for methods in app.openapi()["paths"].values())
    cases: collections.Counter = collections.Counter()
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[str] = []
    spent: dict[str, float] = {}
    retried: list[str] = []
    started = time.monotonic()
    for operation in operations:
        label = f"{operation.method.upper()} {template(operation)}"
        began = time.monotonic()
        for attempt in (1, 2):
            try:
                fuzz(operation, label, base, known, cases, statuses)
            except Flaky as exc:
                # hypothesis could not replay its own failure: once in a CI run (2026-12-04) its strategy cache raised
                # inside the test thread (a KeyError, then a SystemError from ast.parse) on GET /organizations/. The
                # cases are derandomized, so a failure of the server's comes back on the second attempt; one of
                # hypothesis' own does not. Either way the retry is printed.
                if attempt == 2:
                    failures.append(f"{label}: {exc}")
                else:
                    retried.append(f"{label}: {str(exc).splitlines()[0]}")
                    continue
            except (Exception, FailureGroup) as exc:  # report every operation's failures (shrunk) at the end
                failures.append(f"{label}: {exc}")
            break
        spent[label] = time.monotonic() - began
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nschemathesis: {len(operations)} operations, {sum(cases.values())} cases in {elapsed:.1f} s")
        for label in sorted(cases):
            answers = dict(sorted(statuses[label].items()))
            print(f"  {label:50} {cases[label]:3} cases {spent[label]:5.1f} s  {answers}")
        for note in retried:
            print(f"  retried once, hypothesis could not replay a case: {note}")
    assert not failures, "\n\n".join(failures)
    unchecked = [label for label in MUST_SUCCEED if not any(200 <= s < 300 for s in statuses[label])]
    assert not unchecked, f"no success answer was checked for {unchecked}"


def api_operations(app) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, operation)
        for path, methods in app.openapi()["paths"].items()
        for method, operation in methods.items()
    ]


def test_every_route_is_in_the_schema_with_its_answer_and_error_models(served):
    app, _ = served
    documented = {(m, p) for m, p, _ in api_operations(app)}
    for module in pkgutil.iter_modules(routes.__path__):  # every route module's routes: served and documented
        router = importlib.import_module(f"{routes.__name__}.{module.name}").router
        for route in router.routes:
            for method in set(route.methods) - {"HEAD"}:
                path = API_PREFIX + route.path
                assert (method, path) in documented, f"{method} {path} ({module.name}) is not in the app's schema"
    error_ref = "#/components/schemas/ErrorDetail"
    for method, path, operation in api_operations(app):
        responses = operation["responses"]
        success = [s for s in responses if s.startswith("2")]
        assert success, f"{method} {path} declares no success status"
        for status in success:
            content = responses[status].get("content", {})
            if status == "204":
                assert not content, f"{method} {path}: a 204 has no body"
                continue
            assert method != "DELETE", f"{method} {path} must answer 204 with no body, not {status}"
            assert content, f"{method} {path} declares no body for {status}: give the route a response_model"
            json_schema = content.get("application/json", {}).get("schema")
            if json_schema is not None:
                assert json_schema.get("$ref") or json_schema.get("items", {}).get("$ref"), (
                    f"{method} {path}: its {status} answer is a bare {json_schema}: declare a response_model"
                )
        for status in ("401", "422", "500"):
            ref = responses.get(status, {}).get("content", {}).get("application/json", {}).get("schema", {})
            assert ref.get("$ref") == error_ref, f"{method} {path}: {status} must be declared as ErrorDetail"
        for status, answer in responses.items():
            if status.startswith(("4", "5")):
                ref = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                assert ref == error_ref, f"{method} {path}: {status} is declared as {ref}, not ErrorDetail"
    assert "HTTPValidationError" not in app.openapi()["components"]["schemas"]  # FastAPI's list detail


def test_without_the_key_every_operation_is_a_401_with_a_string_detail(served):
    app, base = served
    for method, path, _ in api_operations(app):
        filled = PARAMETER.sub("x", path)
        answer = httpx.request(method, base + filled, timeout=30)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert isinstance(answer.json()["detail"], str)


def test_the_schema_and_the_docs_page_answer_without_the_key(served):
    _, base = served
    schema = httpx.get(base + API_PREFIX + "/openapi.json", timeout=30)
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "avala-infer"
    assert schema.json()["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-Avala-Api-Key"
    docs = httpx.get(base + API_PREFIX + "/docs/", timeout=30)
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert API_PREFIX + "/openapi.json" in docs.text


@pytest.mark.parametrize(
    ("client_type", "model_name", "hidden"),
    [
        ("types.Project", "Project", set()),
        ("types.Task", "Task", set()),
        ("types.Dataset", "Dataset", set()),
        ("types.DatasetItem", "DatasetItem", {"path"}),  # the local path is never shown
        ("types.AutoLabelJob", "AutoLabelJob", set()),
        ("account.Organization", "Organization", set()),
        ("account.User", "User", set()),
    ],
)
def test_the_response_models_declare_every_field_of_the_clients_objects(client_type, model_name, hidden):
    """A response model sends only the fields it declares: a field added to a client object must be added to
    its model too (or be listed here as not shown)."""
    import dataclasses

    from avala_infer.server import schemas

    module, name = client_type.split(".")
    cls = getattr(importlib.import_module(f"avala_infer.client.{module}"), name)
    missing = {f.name for f in dataclasses.fields(cls)} - hidden - set(getattr(schemas, model_name).model_fields)
    assert not missing, f"schemas.{model_name} lacks {sorted(missing)} of the client's {name}"
