"""SSRF address rules, Standard Webhooks signing, the retry schedule, storage error messages."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random

import pytest
from minio.error import S3Error

from sdapi.callbacks.signing import sign
from sdapi.callbacks.ssrf import CallbackPolicy, CallbackRefused, parse_ip_literal, resolve_target, split_url
from sdapi.config import MinioConfig
from sdapi.core.deliveries import DeliveryStatus, after_attempt, backoff_seconds, new_delivery
from sdapi.storage.minio import _describe
from tests.receivers import verify

STRICT = CallbackPolicy(allow_private_networks=False, allowed_hosts=())
LAN = CallbackPolicy(allow_private_networks=True, allowed_hosts=())


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("169.254.169.254", "169.254.169.254"),
        ("0", "0.0.0.0"),
    ],
)
def test_numeric_host_forms_are_read_as_addresses(host, address):
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "deadbeef", "a.b.c", "receiver.lan"])
def test_names_are_not_addresses(host):
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "fe80::1",
        "224.0.0.1",
        "ff02::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.31.40",
        "100.64.0.1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "240.0.0.1",
    ],
)
def test_internal_addresses_are_refused_by_default(address):
    with pytest.raises(CallbackRefused):
        STRICT.check_address("h", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address):
    STRICT.check_address("h", ipaddress.ip_address(address))


def test_allow_private_networks_opens_private_ranges_only():
    for address in ["10.0.0.1", "172.16.5.4", "192.168.31.40", "100.64.0.1", "fd00::1"]:
        LAN.check_address("h", ipaddress.ip_address(address))
    for address in ["127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "::1"]:
        with pytest.raises(CallbackRefused):
            LAN.check_address("h", ipaddress.ip_address(address))


def test_allowed_hosts_by_name_and_cidr():
    policy = CallbackPolicy(allow_private_networks=False, allowed_hosts=("Receiver.LAN", "192.168.31.0/24"))
    policy.check_address("receiver.lan", ipaddress.ip_address("192.168.1.9"))
    policy.check_address("other", ipaddress.ip_address("192.168.31.40"))
    with pytest.raises(CallbackRefused):
        policy.check_address("other", ipaddress.ip_address("192.168.32.1"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x.com/",
        "file:///etc/passwd",
        "//x.com",
        "http://",
        "http://u:p@x.com/",
        "http://x.com:99999/",
        "javascript:alert(1)",
    ],
)
def test_only_http_urls_with_a_host(url):
    with pytest.raises(CallbackRefused):
        split_url(url)


def test_split_url_defaults_ports():
    assert split_url("https://x.com/cb") == ("https", "x.com", 443)
    assert split_url("http://x.com:8080/cb") == ("http", "x.com", 8080)


def test_a_name_with_any_internal_address_is_refused_and_the_first_address_is_used():
    async def resolver(host, port):
        return {"mixed.test": ["93.184.216.34", "10.0.0.5"], "public.test": ["93.184.216.34", "1.1.1.1"]}[host]

    with pytest.raises(CallbackRefused):
        asyncio.run(resolve_target("http://mixed.test/cb", STRICT, resolver, 1.0))
    target = asyncio.run(resolve_target("https://public.test/cb", STRICT, resolver, 1.0))
    assert (target.address, target.port, target.scheme) == ("93.184.216.34", 443, "https")


def test_unresolvable_and_slow_names_are_refused():
    async def failing(host, port):
        raise OSError("no such host")

    async def slow(host, port):
        await asyncio.sleep(5)
        return ["203.0.113.7"]

    for resolver in (failing, slow):
        with pytest.raises(CallbackRefused):
            asyncio.run(resolve_target("http://nowhere.test/", STRICT, resolver, 0.2))


def test_standard_webhooks_signature_matches_the_spec_example():
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v1,bogus {signature}",
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")


def test_default_backoff_spreads_six_attempts_over_about_fifteen_minutes():
    waits = [backoff_seconds(n, 30.0, random.Random(0)) for n in range(1, 6)]
    assert 0.75 * 930 <= sum(waits) <= 1.25 * 930
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))


def test_after_attempt_transitions():
    delivery = new_delivery("t", "http://x/", now=100.0)
    retried = after_attempt(
        delivery,
        delivered=False,
        retryable=True,
        error="HTTP 500",
        now=100.0,
        max_attempts=3,
        backoff_base=10.0,
        rng=random.Random(1),
    )
    assert retried.status is DeliveryStatus.PENDING and retried.attempts == 1 and retried.next_attempt_at > 100
    assert retried.id == delivery.id
    gave_up = after_attempt(
        retried, delivered=False, retryable=False, error="HTTP 404", now=1.0, max_attempts=3, backoff_base=10.0
    )
    assert gave_up.status is DeliveryStatus.FAILED and gave_up.last_error == "HTTP 404"
    last = msgspec_replace(retried, attempts=2)
    assert (
        after_attempt(
            last, delivered=False, retryable=True, error="x", now=1.0, max_attempts=3, backoff_base=1.0
        ).status
        is DeliveryStatus.FAILED
    )
    assert (
        after_attempt(
            last, delivered=True, retryable=False, error=None, now=1.0, max_attempts=3, backoff_base=1.0
        ).status
        is DeliveryStatus.DELIVERED
    )


def msgspec_replace(struct, **changes):
    import msgspec

    return msgspec.structs.replace(struct, **changes)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [("InvalidAccessKeyId", "凭证或权限错误"), ("AccessDenied", "凭证或权限错误"), ("NoSuchBucket", "NoSuchBucket")],
)
def test_storage_errors_name_the_problem_and_never_the_secret(code, fragment):
    config = MinioConfig(endpoint="minio:9000", access_key="AK", secret_key="topsecret", bucket="sd-images")
    error = S3Error(None, code, "message with topsecret?", "resource", "request", "host")
    text = _describe(error, config)
    assert fragment in text and "minio:9000/sd-images" in text and "topsecret" not in text
