import ipaddress
import socket
import uuid

import pytest

from shared.ssrf import (
    AllowRule,
    UnresolvableHostError,
    UnsafeURLError,
    check_url_syntax,
    parse_allow_cidrs,
    resolve_and_check,
)

LOOPBACK_ALLOWED = parse_allow_cidrs("127.0.0.0/8")
PUBLIC_V4 = ipaddress.ip_address("93.184.215.14")
PUBLIC_V6 = ipaddress.ip_address("2606:4700:4700::1111")

FAKE_DNS = {
    "public.example": [PUBLIC_V4, PUBLIC_V6],
    "internal.example": [ipaddress.ip_address("10.1.2.3")],
    "mixed.example": [PUBLIC_V4, ipaddress.ip_address("127.0.0.1")],
    "v6-loopback.example": [PUBLIC_V4, ipaddress.ip_address("::1")],
    "mapped.example": [ipaddress.ip_address("::ffff:127.0.0.1")],
    "metadata.google.internal": [ipaddress.ip_address("169.254.169.254")],
    "nip.example": [ipaddress.ip_address("127.0.0.1")],
}


def fake_resolver(host: str, port: int) -> list:
    if host not in FAKE_DNS:
        raise UnresolvableHostError(f"{host} not in fake DNS", code="unresolvable")
    return FAKE_DNS[host]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f000001/", "127.0.0.1"),
        ("http://0X7F000001/", "127.0.0.1"),
        ("http://017700000001/", "127.0.0.1"),
        ("http://0177.0.0.1/", "127.0.0.1"),
        ("http://0x7f.0x0.0x0.0x1/", "127.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("http://127.0.1/", "127.0.0.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("http://0177.1/", "127.0.0.1"),
        ("http://127.0.0.1./", "127.0.0.1"),
        ("http://0/", "0.0.0.0"),
        ("http://0x/", "0.0.0.0"),
        ("http://2852039166/", "169.254.169.254"),
        ("http://0xa9fea9fe/", "169.254.169.254"),
        ("http://0251.0376.0251.0376/", "169.254.169.254"),
        ("http://169.254.43518/", "169.254.169.254"),
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "127.0.0.1"),  # full-width digits
        ("http://127\u30020\u30020\u30021/", "127.0.0.1"),  # ideographic full stops
        ("http://[::1]/", "::1"),
        ("http://[0:0:0:0:0:0:0:1]/", "::1"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
        ("http://[::FFFF:7F00:1]/", "::ffff:7f00:1"),
        ("http://LocalHost./", "localhost"),
        ("http://B\u00dcCHER.example/", "xn--bcher-kva.example"),
    ],
)
def test_ip_spellings_and_names_are_normalised_to_what_a_browser_would_reach(url, host):
    assert check_url_syntax(url).host == host


def test_normalised_url_drops_fragment_and_default_port_and_keeps_query():
    parsed = check_url_syntax("HTTPS://Hooks.Example.COM:443/in/bound?tenant=7#frag")
    assert parsed.url == "https://hooks.example.com/in/bound?tenant=7"
    assert (parsed.scheme, parsed.port, parsed.ip) == ("https", 443, None)
    assert check_url_syntax("http://[::1]:8080").url == "http://[::1]:8080/"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/", "scheme"),
        ("gopher://example.com:70/_", "scheme"),
        ("dict://example.com:11211/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("example.com/hook", "scheme"),
        ("//example.com/hook", "scheme"),
        ("", "syntax"),
        ("http:///hook", "host"),
        ("http://user:pass@example.com/", "userinfo"),
        ("http://user@example.com/", "userinfo"),
        ("http://example.com@127.0.0.1/", "userinfo"),
        ("http://:@example.com/", "userinfo"),
        ("http://example.com\\@127.0.0.1/", "syntax"),
        ("http://example.com:0/", "port"),
        ("http://example.com:65536/", "port"),
        ("http://example.com:+80/", "port"),
        ("http://example.com:80:80/", "port"),
        ("http://example.com:/", "port"),
        ("http://exa mple.com/", "syntax"),
        ("http://example.com/\r\nX-Injected: 1", "syntax"),
        (" http://example.com/", "syntax"),
        ("http://[::1%25eth0]/", "host"),
        ("http://[fe80::1%25lo]/", "host"),
        ("http://[::1/", "syntax"),
        ("http://[127.0.0.1]/", "syntax"),
        ("http://[::1]x/", "host"),
        ("http://127.0.0.%31/", "host"),
        ("http://%6c%6f%63%61%6c%68%6f%73%74/", "host"),
        ("http://1.2.3.4.5/", "host"),
        ("http://256.0.0.1/", "host"),
        ("http://0x100000000/", "host"),
        ("http://4294967296/", "host"),
        ("http://1.2.3.08/", "host"),
        ("http://1..2/", "host"),
        ("http://foo.0x7f/", "host"),
        ("http://foo.123/", "host"),
        ("http://a..example.com/", "host"),
        ("http://" + "a" * 64 + ".example.com/", "host"),
        ("http://exa$mple.com/", "host"),
        ("http://example\uff0ecom\uff1a80/", "syntax"),  # full-width dot and colon
        ("http://" + "a" * 2100 + ".com/", "syntax"),
    ],
)
def test_malformed_or_non_http_urls_are_refused_before_any_lookup(url, code):
    with pytest.raises(UnsafeURLError) as excinfo:
        check_url_syntax(url)
    assert excinfo.value.code == code
    assert str(excinfo.value).startswith("The webhook URL")


# Each of these reaches an internal or special address. The flag says whether
# WEBHOOK_ALLOW_CIDRS=127.0.0.0/8 lets it through (only real IPv4 loopback may pass).
TRICKY_URLS = [
    ("http://127.0.0.1/", True),
    ("http://127.0.0.1:8080/hook", True),
    ("http://127.255.255.254/", True),
    ("http://2130706433/", True),
    ("http://0x7f000001/", True),
    ("http://0177.0.0.1/", True),
    ("http://127.1/", True),
    ("http://0x7f.1/", True),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", True),
    ("http://[::ffff:127.0.0.1]/", True),
    ("http://[::ffff:7f00:1]/", True),
    ("http://nip.example/", True),
    ("http://mapped.example/", True),
    ("http://mixed.example/", True),
    ("http://0.0.0.0/", False),
    ("http://0/", False),
    ("http://0.0.0.1/", False),
    ("http://[::]/", False),
    ("http://[::1]/", False),
    ("http://v6-loopback.example/", False),
    ("http://[::127.0.0.1]/", False),
    ("http://[::ffff:0.0.0.0]/", False),
    ("http://[64:ff9b::7f00:1]/", False),
    ("http://[2002:7f00:1::]/", False),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", False),  # Teredo, client 127.0.0.1
    ("http://10.0.0.1/", False),
    ("http://172.16.0.1/", False),
    ("http://172.31.255.255/", False),
    ("http://192.168.1.1/", False),
    ("http://internal.example/", False),
    ("http://100.64.0.1/", False),
    ("http://169.254.0.1/", False),
    ("http://169.254.169.254/latest/meta-data/", False),
    ("http://2852039166/", False),
    ("http://0xa9fea9fe/", False),
    ("http://169.254.170.2/v2/credentials", False),
    ("http://100.100.100.200/latest/meta-data/", False),
    ("http://168.63.129.16/", False),
    ("http://192.0.0.192/", False),
    ("http://metadata.google.internal/computeMetadata/v1/", False),
    ("http://[fd00:ec2::254]/", False),
    ("http://[fd20:ce::254]/", False),
    ("http://[::ffff:169.254.169.254]/", False),
    ("http://[::ffff:a9fe:a9fe]/", False),
    ("http://[64:ff9b::a9fe:a9fe]/", False),
    ("http://[2002:a9fe:a9fe::]/", False),
    ("http://224.0.0.1/", False),
    ("http://239.255.255.250:1900/", False),
    ("http://255.255.255.255/", False),
    ("http://240.0.0.1/", False),
    ("http://198.18.0.1/", False),
    ("http://192.0.2.1/", False),
    ("http://[fe80::1]/", False),
    ("http://[fc00::1]/", False),
    ("http://[fd12:3456::1]/", False),
    ("http://[fec0::1]/", False),
    ("http://[ff02::1]/", False),
    ("http://[ff0e::1]/", False),
    ("http://[100::1]/", False),
    ("http://[2001:db8::1]/", False),
    ("http://[64:ff9b:1::a00:1]/", False),
    ("http://[4000::1]/", False),
]


@pytest.mark.parametrize(("url", "_loopback_ok"), TRICKY_URLS)
def test_internal_addresses_are_refused_without_an_allow_list(url, _loopback_ok):
    with pytest.raises(UnsafeURLError) as excinfo:
        resolve_and_check(url, [], resolver=fake_resolver)
    assert excinfo.value.code == "address"


@pytest.mark.parametrize(("url", "loopback_ok"), TRICKY_URLS)
def test_a_loopback_allow_list_admits_ipv4_loopback_and_nothing_else(url, loopback_ok):
    if loopback_ok:
        _parsed, addresses = resolve_and_check(url, LOOPBACK_ALLOWED, resolver=fake_resolver)
        assert addresses
        loopback_or_public = [a for a in addresses if a.is_loopback or a == PUBLIC_V4]
        assert loopback_or_public == addresses
        assert all(a.version == 4 for a in addresses), "mapped addresses are returned as IPv4"
    else:
        with pytest.raises(UnsafeURLError):
            resolve_and_check(url, LOOPBACK_ALLOWED, resolver=fake_resolver)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://168.63.129.16/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/",
    ],
)
def test_metadata_addresses_stay_refused_even_when_allow_list_covers_them(url):
    everything = parse_allow_cidrs("0.0.0.0/0, ::/0")
    with pytest.raises(UnsafeURLError, match="metadata") as excinfo:
        resolve_and_check(url, everything, resolver=fake_resolver)
    assert excinfo.value.code == "address"


def test_allow_list_admits_a_private_receiver_network():
    allow = parse_allow_cidrs("10.0.0.0/8")
    _parsed, addresses = resolve_and_check("https://internal.example/hook", allow, resolver=fake_resolver)
    assert addresses == [ipaddress.ip_address("10.1.2.3")]
    with pytest.raises(UnsafeURLError):
        resolve_and_check("http://192.168.1.1/", allow)


@pytest.mark.parametrize(
    "url",
    [
        "https://public.example/hooks",
        "http://93.184.215.14:8443/x",
        "http://[2606:4700:4700::1111]/",
        "http://[64:ff9b::5db8:d70e]/",  # NAT64 form of a public address
        "http://[::ffff:93.184.215.14]/",
    ],
)
def test_public_addresses_pass(url):
    parsed, addresses = resolve_and_check(url, [], resolver=fake_resolver)
    assert addresses
    assert parsed.url.startswith(url.split("/")[0])


def test_every_resolved_address_must_be_public_not_just_the_first():
    with pytest.raises(UnsafeURLError, match="loopback"):
        resolve_and_check("https://mixed.example/", [], resolver=fake_resolver)


def test_message_for_a_host_name_says_what_is_wrong_without_leaking_the_internal_address():
    with pytest.raises(UnsafeURLError) as excinfo:
        resolve_and_check("https://internal.example/", [], resolver=fake_resolver)
    message = str(excinfo.value)
    assert "'internal.example' resolves to a private address" in message
    assert "WEBHOOK_ALLOW_CIDRS" in message
    assert "10.1.2.3" not in message
    assert excinfo.value.address == ipaddress.ip_address("10.1.2.3")


def test_message_for_a_literal_names_the_real_address_behind_the_spelling():
    with pytest.raises(UnsafeURLError, match=r"points to 127\.0\.0\.1, which is a loopback address"):
        resolve_and_check("http://0x7f.1/", [])


def test_localhost_is_refused_through_the_real_resolver():
    with pytest.raises(UnsafeURLError, match="loopback"):
        resolve_and_check("http://localhost:8000/", [])
    _parsed, addresses = resolve_and_check("http://localhost:8000/", parse_allow_cidrs("127.0.0.0/8, ::1"))
    assert all(a.is_loopback for a in addresses)


def test_real_metadata_name_is_refused_whether_or_not_it_resolves_here():
    with pytest.raises(UnsafeURLError):
        resolve_and_check("http://metadata.google.internal/computeMetadata/v1/", parse_allow_cidrs("0.0.0.0/0"))


def test_unresolvable_host_is_its_own_error():
    with pytest.raises(UnresolvableHostError) as excinfo:
        resolve_and_check("https://does-not-exist.invalid/", [])
    assert excinfo.value.code == "unresolvable"


def test_system_resolver_result_is_checked(monkeypatch):
    def rebound(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.0.10", port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    with pytest.raises(UnsafeURLError, match="private"):
        resolve_and_check("https://looks-public.example/", [])


def test_parse_allow_cidrs_plain_networks_stay_valid():
    assert parse_allow_cidrs("") == []
    assert parse_allow_cidrs("  ,  ") == []
    assert parse_allow_cidrs(" 10.0.0.0/8 , 192.168.1.5,::1/128") == [
        AllowRule(ipaddress.ip_network("10.0.0.0/8")),
        AllowRule(ipaddress.ip_network("192.168.1.5/32")),
        AllowRule(ipaddress.ip_network("::1/128")),
    ]
    with pytest.raises(ValueError, match="WEBHOOK_ALLOW_CIDRS entry '10.0.0.1/8'"):
        parse_allow_cidrs("10.0.0.1/8")
    with pytest.raises(ValueError, match="'intranet'"):
        parse_allow_cidrs("10.0.0.0/8,intranet")


TENANT = "3f2c4a5e-1b2c-4d5e-8f90-0123456789ab"


def test_parse_allow_cidrs_with_ports_and_tenants():
    assert parse_allow_cidrs(f"10.1.2.3:8443, [fd00::/8]:443, {TENANT}@10.9.0.0/16:443, [::1]") == [
        AllowRule(ipaddress.ip_network("10.1.2.3/32"), 8443),
        AllowRule(ipaddress.ip_network("fd00::/8"), 443),
        AllowRule(ipaddress.ip_network("10.9.0.0/16"), 443, TENANT),
        AllowRule(ipaddress.ip_network("::1/128")),
    ]
    for bad, why in [("10.0.0.1:0", "port"), ("10.0.0.1:https", "port"), ("clinic@10.0.0.0/8", "tenant id"),
                     ("[fd00::/8:443", "unbalanced"), ("[fd00::/8]443", "unbalanced")]:
        with pytest.raises(ValueError, match=why):
            parse_allow_cidrs(bad)


def test_a_port_rule_admits_only_that_port():
    allow = parse_allow_cidrs("10.0.0.5:8443")
    _parsed, addresses = resolve_and_check("https://10.0.0.5:8443/hook", allow)
    assert addresses == [ipaddress.ip_address("10.0.0.5")]
    for url in ("https://10.0.0.5/hook", "http://10.0.0.5:6379/", "https://10.0.0.6:8443/"):
        with pytest.raises(UnsafeURLError, match="private"):
            resolve_and_check(url, allow)


def test_a_tenant_rule_admits_only_that_tenants_endpoints():
    allow = parse_allow_cidrs(f"{TENANT}@10.20.0.0/16:443")
    resolve_and_check("https://10.20.1.1/hook", allow, tenant_id=uuid.UUID(TENANT))
    with pytest.raises(UnsafeURLError, match="private"):
        resolve_and_check("https://10.20.1.1/hook", allow, tenant_id=uuid.uuid4())
    with pytest.raises(UnsafeURLError, match="private"):
        resolve_and_check("https://10.20.1.1/hook", allow)


def test_metadata_stays_refused_even_with_a_port_rule():
    with pytest.raises(UnsafeURLError, match="metadata"):
        resolve_and_check("http://169.254.169.254:80/latest", parse_allow_cidrs("169.254.0.0/16:80"))
