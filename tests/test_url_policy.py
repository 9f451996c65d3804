"""Issue 9, item 2: the callback URL policy (``avala_infer/url_policy.py``).

http(s) only; link-local and cloud metadata addresses and names refused when an agent's URL is set (through the
real client and store) and again at every delivery, after resolving the host name, with a real receiver on
127.0.0.1 that must see nothing; private and loopback addresses allowed by default; the
``AVALA_INFER_CALLBACK_DENY`` / ``AVALA_INFER_CALLBACK_ALLOW`` settings.
"""

from __future__ import annotations

import pytest

from avala_infer import Avala
from avala_infer.agents import Dispatcher
from avala_infer.errors import ConfigError, UnsafeURLError
from avala_infer.types import Text
from tests.webhook_receivers import Receiver

FAST = {"poll_s": 0.02, "lease_s": 5.0, "timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_cap_s": 0.05}

REFUSED = [
    ("http://169.254.169.254/latest/meta-data", "is in 169.254.0.0/16"),
    ("http://[fd00:ec2::254]/", "is in fd00:ec2::254/128"),
    ("ftp://x", "has scheme 'ftp': only http:// and https://"),
    ("file:///etc/passwd", "has scheme 'file': only http:// and https://"),
    ("example.com/hook", "has no scheme"),
    ("http:///hook", "has no host"),
    ("http://[fe80::1]:8080/hook", "is in fe80::/10"),
    ("http://[::ffff:169.254.169.254]/", "169.254.169.254 is in 169.254.0.0/16"),  # IPv4-mapped IPv6
    ("http://2852039166/", "169.254.169.254 is in 169.254.0.0/16"),  # the same address as one number
    ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254 is in 169.254.0.0/16"),  # ... and in hex
    ("http://metadata.google.internal/computeMetadata/v1/", "host metadata.google.internal"),
    ("http://METADATA./", "host metadata"),
]
ALLOWED = ["http://127.0.0.1:8000/hooks", "http://10.1.2.3/", "https://192.168.1.20:8443/x", "http://[::1]:9000/",
           "http://receiver.lan/hook", "https://hooks.example.com/avala"]  # fmt: skip


@pytest.fixture(autouse=True)
def no_policy_settings(monkeypatch):
    monkeypatch.delenv("AVALA_INFER_CALLBACK_DENY", raising=False)
    monkeypatch.delenv("AVALA_INFER_CALLBACK_ALLOW", raising=False)


@pytest.fixture
def client(tmp_path):
    with Avala(home=tmp_path / "home", worker=False) as client:
        yield client


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_create_and_update_refuse_unsafe_callback_urls(client, url, why):
    with pytest.raises(UnsafeURLError) as refused:
        client.agents.create(name="bad", events=["task.completed"], callback_url=url)
    assert isinstance(refused.value, ConfigError)  # a bad argument, found before any work
    message = str(refused.value)
    assert message.startswith(f"callback URL {url!r}") and why in message, message
    if "is in" in why or why.startswith("host"):  # a rule of the policy: the message says how to lift it
        assert "which the default callback URL policy" in message and "AVALA_INFER_CALLBACK_ALLOW" in message
    assert client.agents.list().items == []

    agent = client.agents.create(name="good", events=["task.completed"], callback_url="http://127.0.0.1:9/x")
    with pytest.raises(UnsafeURLError):
        client.agents.update(agent.uid, callback_url=url)
    assert client.agents.get(agent.uid).callback_url == "http://127.0.0.1:9/x"


@pytest.mark.parametrize("url", ALLOWED)
def test_private_loopback_and_public_urls_are_allowed_by_default(client, url):
    assert client.agents.create(name="ok", events=["task.completed"], callback_url=url).callback_url == url


def test_the_allow_setting_lifts_a_denied_network_and_only_it(client, monkeypatch):
    monkeypatch.setenv("AVALA_INFER_CALLBACK_ALLOW", "169.254.10.0/24, metadata.google.internal")
    for url in ("http://169.254.10.5:8080/hook", "http://metadata.google.internal/hook"):
        assert client.agents.create(name="lan", callback_url=url).callback_url == url
    with pytest.raises(UnsafeURLError, match=r"169\.254\.169\.254 is in 169\.254\.0\.0/16"):
        client.agents.create(name="metadata", callback_url="http://169.254.169.254/")
    with pytest.raises(UnsafeURLError, match="host metadata, which"):
        client.agents.create(name="metadata", callback_url="http://metadata/")

    monkeypatch.setenv("AVALA_INFER_CALLBACK_ALLOW", "169.254.169.254")
    assert client.agents.create(name="imds", callback_url="http://169.254.169.254/hook").callback_url


def test_the_deny_setting_adds_networks_names_and_domains(client, monkeypatch):
    monkeypatch.setenv("AVALA_INFER_CALLBACK_DENY", "private,loopback,.corp.example")
    denied = [
        ("http://10.1.2.3/", "10.1.2.3 is in 10.0.0.0/8"),
        ("http://127.0.0.1:80/", "127.0.0.0/8"),
        ("http://[::1]/", "::1 is in ::1/128"),
        ("http://hooks.corp.example/", "matches .corp.example"),
    ]
    for url, why in denied:
        with pytest.raises(UnsafeURLError, match=why) as refused:
            client.agents.create(name="x", callback_url=url)
        assert "which AVALA_INFER_CALLBACK_DENY denies" in str(refused.value)
        assert "remove" in str(refused.value) and "AVALA_INFER_CALLBACK_ALLOW" in str(refused.value)
    with pytest.raises(UnsafeURLError, match="169.254.0.0/16"):  # the defaults stay
        client.agents.create(name="x", callback_url="http://169.254.169.254/")
    monkeypatch.setenv("AVALA_INFER_CALLBACK_ALLOW", "10.9.0.0/16")
    assert client.agents.create(name="x", callback_url="http://10.9.8.7/").callback_url == "http://10.9.8.7/"

    monkeypatch.setenv("AVALA_INFER_CALLBACK_DENY", "10.0.0.0/33")
    with pytest.raises(ConfigError, match=r"AVALA_INFER_CALLBACK_DENY has '10.0.0.0/33', which is neither"):
        client.agents.create(name="x", callback_url="http://10.1.2.3/")


def test_delivery_resolves_the_host_and_refuses_a_denied_address(client, monkeypatch):
    """An agent whose URL names a host (allowed as written) that resolves to a denied address: at delivery the
    receiver gets nothing and the execution fails, at once, with the policy's message (the same for
    ``agents.test``). Without the deny setting the same URL is delivered (the control)."""
    project = client.projects.create("notes", data_type="text")
    client.projects.import_items(project.uid, [Text("one"), Text("two"), Text("three")])
    tasks = [t.uid for t in client.tasks.list(project=project.uid)]
    with Receiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        agent = client.agents.create(name="local", events=["task.completed"], callback_url=url, secret="k")
        client.tasks.complete(tasks[0])
        assert Dispatcher(client.home, **FAST).run(until_idle=True) == 1
        assert len(receiver.seen()) == 1  # the control: localhost reaches the receiver

        monkeypatch.setenv("AVALA_INFER_CALLBACK_DENY", "127.0.0.0/8")
        client.tasks.complete(tasks[1])
        assert Dispatcher(client.home, **FAST).run(until_idle=True) == 1  # one attempt, not retried
        tested = client.agents.test(agent.uid, timeout=2)
        assert len(receiver.seen()) == 1  # nothing more was posted

    executions = client.agents.list_executions(agent.uid).items
    assert [(e.event_type, e.status) for e in executions] == [
        ("task.completed", "succeeded"),
        ("task.completed", "failed"),
        ("agent.test", "failed"),
    ]
    expected = (
        f"callback URL {url!r} is refused: localhost (resolved to 127.0.0.1) is in 127.0.0.0/8, which "
        "AVALA_INFER_CALLBACK_DENY denies; remove 127.0.0.0/8 from AVALA_INFER_CALLBACK_DENY, or add 127.0.0.1 to "
        "AVALA_INFER_CALLBACK_ALLOW"
    )
    assert executions[1].error_message == expected and executions[1].response_status is None
    assert tested["success"] is False and tested["message"] == expected
    stats = client.agents.get(agent.uid).execution_stats
    assert stats["pending_deliveries"] == 0 and stats["failed"] == 2
