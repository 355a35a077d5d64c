"""Policy files: the two examples load into the seeds' numbers, and bad files
fail naming the file, the key path and what was expected."""

import pathlib
import textwrap

import pytest

from fastlimit import ConfigurationError, Policy, QuotaSpec, Rate, SharedTable
from fastlimit.policy.config import load_dict, load_file

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
MIN = 60 * 10**9


def test_seed000_tier_table():
    spec = load_file(EXAMPLES / "seed000.toml")
    assert spec.name == "scopix"
    table = {name: (t.rate, t.api_access, t.concurrency["uploads"], t.caps["batch_files"],
                    t.quotas["ai_descriptions"], t.quotas["chat_messages"])
             for name, t in spec.tiers.items()}
    month = lambda n: QuotaSpec(n, "month")  # noqa: E731
    assert table == {
        "FREE": (Rate(10, MIN), False, 10, 10, month(10), month(10)),
        "STARTER": (Rate(30, MIN), True, 20, 50, month(500), month(200)),
        "PROFESSIONAL": (Rate(100, MIN), True, 30, 100, month(2500), month(2000)),
        "ENTERPRISE": (Rate(500, MIN), True, 50, 200, month(10000), month(500000)),
        "CUSTOM": (None, True, None, None, None, None),
    }
    for t in spec.tiers.values():  # the rows every tier shares, CUSTOM included
        assert t.caps["batch_payload_bytes"] == 2 * 10**9
        assert t.caps["image_file_bytes"] == 100 * 10**6
        assert t.caps["document_file_bytes"] == 50 * 10**6
    assert str(spec.tiers["STARTER"].quotas["chat_messages"]) == "200/month"


def test_seed000_identities_and_routes():
    spec = load_file(EXAMPLES / "seed000.toml")
    ids = spec.identities
    assert (ids["api_key"].name, ids["api_key"].rate) == ("api", "tier")
    assert ids["session"].rate == Rate(300, MIN)
    assert ids["anonymous"].rate == Rate(5, MIN)
    routes = {r.name: r for r in spec.routes}
    per_minute = {name: r.rate.limit for name, r in routes.items()
                  if not r.dedicated and r.rate.period_ns == MIN}
    assert per_minute == {
        "POST /auth/session/login": 5,
        "POST /auth/session/register": 10,
        "POST /auth/session/google": 10,
        "POST /auth/session/resend-verification": 5,
        "POST /auth/session/resend-verification-by-email": 5,
        "POST /auth/session/password-reset/request": 3,
        "POST /auth/session/password-reset/validate": 10,
        "POST /auth/session/password-reset/complete": 5,
        "POST /auth/session/verify-email": 5,
        "POST /auth/session/link-provider": 5,
        "POST /auth/session/unlink-provider": 3,
        "POST /auth/session/rotate-session": 10,
        "POST /cloud-storage/auth/google_drive": 10,
        "GET /cloud-storage/auth/google_drive/callback": 10,
        "POST /cloud-storage/import": 30,
        "POST /cloud-storage/export": 30,
        "POST /support/contact": 3,
    }
    assert all(r.patterns == (name,) and r.per == "ip" for name, r in routes.items()
               if name in per_minute)
    batch = routes["batch-upload"]
    assert (batch.rate, batch.anonymous_rate, batch.per, batch.dedicated) == (
        Rate(500, MIN), Rate(200, MIN), "ip", True)
    stripe = routes["stripe-webhook"]
    assert (stripe.patterns, stripe.rate, stripe.anonymous_rate, stripe.dedicated) == (
        ("POST /payment/webhooks/stripe",), Rate(200, MIN), None, True)
    assert (spec.headers.reset, spec.headers.legacy) == ("epoch", True)
    assert spec.responses["rate"].status == 429
    assert spec.store.table == "scopix"


def test_seed002():
    spec = load_file(EXAMPLES / "seed002.toml")
    assert spec.identities["token"].rate == Rate(100, 3600 * 10**9)
    assert spec.headers.reset == "iso"
    assert dict(spec.responses["rate"].body) == {
        "success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}


def test_customers_override_their_tier_and_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent("""
        [store]
        overrides = "state/overrides.json"
        [identities.api_key]
        [tier_defaults]
        caps = { batch_payload_bytes = "2GiB" }
        [tiers.CUSTOM]
        requests_per_minute = "unlimited"
        quotas = { chat = "unlimited", ai = "unlimited" }
        [customers.acme]
        tier = "CUSTOM"
        rate = "2000/1m"
        quotas = { chat = 1_000_000 }
    """))
    spec = load_file(path)
    acme = spec.customers["acme"]
    assert (acme.name, acme.rate) == ("CUSTOM", Rate(2000, MIN))
    assert acme.quotas == {"chat": QuotaSpec(1_000_000, "month"), "ai": None}
    assert acme.caps == {"batch_payload_bytes": 2 * 2**30}
    assert spec.tiers["CUSTOM"].rate is None
    assert spec.store.overrides == str(tmp_path / "state" / "overrides.json")
    assert spec.name == "p"


MINIMAL = """
[identities.api_key]
rate = "tier"
[identities.anonymous]
rate = "5/1m"
[tiers.STARTER]
requests_per_minute = 30
"""

# (extra TOML appended to MINIMAL, or a whole file when it starts with "!"),
# the key path the error must name, and words of what was expected.
BAD = [
    ('[tiers.PRO]\nrequests_per_minute = "thirty"',
     "tiers.PRO.requests_per_minute", 'expected a positive integer or "unlimited", got \'thirty\''),
    ("[tiers.PRO]\nrequests_per_minute = 0",
     "tiers.PRO.requests_per_minute", "expected a positive integer"),
    ("[tiers.PRO]\nrequests_per_minte = 30",
     "tiers.PRO.requests_per_minte", "unknown key; expected one of: api_access, "),
    ("[tiers.PRO]\napi_access = true",
     "tiers.PRO.requests_per_minute", "the key is missing"),
    ('[tiers.PRO]\nrate = "30/1m"\nrequests_per_minute = 30',
     "tiers.PRO.rate", "either requests_per_minute or rate, not both"),
    ('[headers]\nreset = "unix"',
     "headers.reset", "expected one of 'epoch', 'iso', 'delta', got 'unix'"),
    ('[headers]\nietf = "yes"', "headers.ietf", "expected true or false"),
    ('[routes]\n"POST /auth/session/login" = "5/minnute"',
     'routes."POST /auth/session/login"', "expected a rate like '5/1m'"),
    ('[routes]\n"POST /auth/session/login" = "5/1month"',
     'routes."POST /auth/session/login"', "calendar period"),
    ('[routes.batch]\nmatch = ["POST /files/upload", "FETCH files"]\nrate = "500/1m"',
     "routes.batch.match[1]", "'METHOD /path'"),
    ('[routes.batch]\nmatch = "POST /files/upload"',
     "routes.batch.rate", "the key is missing"),
    ('[routes.batch]\nmatch = "POST /x"\nrate = "5/1m"\nper = "user"',
     "routes.batch.per", "expected one of 'ip', 'identity'"),
    ('[identities.session]\nrate = "3/1m"', "identities.anonymous.rate",
     "stricter than every authenticated one, but identities.session.rate is 3/1m"),
    ('[tiers.FREE]\nrequests_per_minute = 4', "identities.anonymous.rate",
     "stricter than every authenticated one, but tiers.FREE is 4/1m"),
    ('[identities.session]\nname = "api"\nrate = "300/1m"',
     "identities.session.name", "a limit name not already used by identities.api_key.name"),
    ('[customers.acme]\ntier = "GOLD"', "customers.acme.tier", "one of the tiers (STARTER)"),
    ('[tiers.PRO]\nrequests_per_minute = 100\ncaps = { batch_payload_bytes = "2 gigs" }',
     "tiers.PRO.caps.batch_payload_bytes", 'a byte size like "100MB"'),
    ('[tiers.PRO]\nrequests_per_minute = 100\ncaps = { batch_files = "50" }',
     "tiers.PRO.caps.batch_files", 'a positive integer or "unlimited"'),
    ('[tiers.PRO]\nrequests_per_minute = 100\nquotas = { chat = "500/hour" }',
     "tiers.PRO.quotas.chat", "an allowance per calendar period"),
    ('[response]\nbody = { message = "wait {seconds}" }',
     "response.body", "placeholders {retry_after} and {limit}"),
    ("[response]\nstatus = 200", "response.status", "an HTTP status from 400 to 599"),
    ("[store]\ncapacity = -1", "store.capacity", "a positive integer"),
    ("[limits]\nx = 1", "limits", "unknown key; expected one of: policy, store"),
    ("!", "identities", "a table with at least one of api_key, session, token, anonymous"),
    ('![identities.api_key]\nrate = "tier"', "identities.api_key.rate",
     "there are no [tiers] for 'tier' to use"),
    ('![identities.token]\nrate = "100/1h"\nname = "tök"', "identities.token.name",
     "a name of printable ASCII characters"),
]


@pytest.mark.parametrize("extra, key_path, expected", BAD, ids=[b[1] for b in BAD])
def test_bad_file_names_file_key_path_and_expectation(tmp_path, extra, key_path, expected):
    path = tmp_path / "policy.toml"
    path.write_text(extra[1:] if extra.startswith("!") else MINIMAL + extra)
    with pytest.raises(ConfigurationError) as e:
        Policy.from_file(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert expected in message, message


def test_minimal_file_is_valid(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(MINIMAL)
    assert load_file(path).tiers["STARTER"].rate == Rate(30, MIN)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[tiers.STARTER]\nrequests_per_minute = = 30\n')
    with pytest.raises(ConfigurationError, match=r"broken\.toml: not valid TOML: .*line 2"):
        Policy.from_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match=r"nope\.toml: cannot read the policy"):
        Policy.from_file(tmp_path / "nope.toml")


def test_from_dict_errors_name_the_dict():
    with pytest.raises(ConfigurationError, match=r"^<dict>: identities.token.rate: expected "):
        Policy.from_dict({"identities": {"token": {"rate": 100}}})
    with pytest.raises(ConfigurationError, match=r"^<dict>: identities: expected a table"):
        load_dict({"identities": []})


def test_policy_opens_the_named_table_of_its_store(table_name, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(f'[store]\ntable = "{table_name}"\ncapacity = 1024\n'
                    '[identities.token]\nrate = "1/1h"\n')
    with Policy.from_file(path) as policy:
        assert policy.store.capacity == 1024
        # one overrides file per (table, policy); the policy is named after its file
        assert policy.overrides.path == f"{policy.store.path}.p.overrides.json"
        other = SharedTable.attach(table_name)
        assert other.path == policy.store.path
        other.close()


ANON = '[identities.anonymous]\nrate = "5/1m"\n'
TIER = ANON + "[tiers.A]\nrequests_per_minute = 6\n"
LONG = "9" * 5000  # past Python's 4300 digits: tomllib raises a bare ValueError


@pytest.mark.parametrize(("text", "where", "accepted"), [
    # numbers too long for Python to read: the key they are at, and what it takes
    (ANON + "[tiers.A]\nrequests_per_minute = " + LONG, "tiers.A.requests_per_minute",
     'expected a positive integer or "unlimited", got \'<a number of 5000 digits>\''),
    (ANON + "[tiers.A]\nrequests_per_minute = -1_" + LONG, "tiers.A.requests_per_minute",
     "got '<a number of 5001 digits>'"),
    (TIER + '[routes.x]\nmatch = ["GET /x", ' + LONG + ']\nrate = "5/1m"', "routes.x.match[1]",
     "expected 'METHOD /path' where METHOD is an HTTP method"),
    (TIER + "[response]\nbody = { code = " + LONG + " }", "response.body.code",
     "expected a number of at most 19 digits, got a number of 5000 digits"),
    (TIER + "[policy]\nipv6_prefix = 5" + LONG[:4400] + "\n[store]\ncapacity = " + LONG,
     "policy.ipv6_prefix", "an IPv6 prefix length from 1 to 128"),
    ('[identities.anonymous]\nrate = "5/1m"\n[tiers.A]\nrequests_per_minute = 2000000000',
     "tiers.A.requests_per_minute", "between 1 and 1000000000"),
    ('[identities.anonymous]\nrate = "5000000000/1m"', "identities.anonymous.rate",
     "between 1 and 1000000000"),
    ('[identities.anonymous]\nrate = "5/1m"\n[tiers.A]\nrequests_per_minute = 6\n'
     'quotas = {x = 99999999999999999}\n[quotas.x]\nmatch = ["GET /x"]',
     "tiers.A.quotas.x", "between 1 and"),
    ('[identities.anonymous]\nrate = "5/1m"\n[store]\ncapacity = 99999999999999',
     "store.capacity", "a capacity from 1 to 1000000000"),
    # values the checks let through once, then failed on (an OverflowError
    # at every request, at the policy's start) or with no file or key
    (TIER + "concurrency = { uploads = 9999999999999999999 }\n"
     '[concurrency.uploads]\nmatch = ["POST /files"]', "tiers.A.concurrency.uploads",
     'expected a whole number from 1 to 100000 (leases in flight), or "unlimited"'),
    (TIER + "concurrency = { uploads = 5 }\n"
     '[concurrency.uploads]\nmatch = ["POST /files"]\nretry_after = 1' + "0" * 400,
     "concurrency.uploads.retry_after", "a whole number of seconds from 1 to 86400, got 1000"),
    (TIER + '[store]\ntable = "../etc/app"', "store.table",
     "table name '../etc/app' is not valid: use 1-200 letters, digits"),
    # a long value is quoted cut short
    (TIER + '[headers]\nreset = "' + "x" * 10_000 + '"', "headers.reset",
     "got 'xxxxxxxx"),
])
def test_every_config_error_names_the_file_the_key_and_what_is_accepted(tmp_path, text, where,
                                                                        accepted):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as e:
        Policy.from_file(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {where}: "), message
    assert accepted in message and len(message) < 1000, message
    if ", got " in message:
        got = message.rsplit(", got ", 1)[-1]
        assert message.count(f", got {got}") == 1, message  # said once


def test_an_overrides_file_in_a_missing_directory_names_the_file_and_key(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[store]\noverrides = "missing/o.json"\n'
                    '[identities.anonymous]\nrate = "5/1m"\n')
    with pytest.raises(ConfigurationError, match=f"^{path}: store.overrides: .*missing/o.json"):
        Policy.from_file(path)
