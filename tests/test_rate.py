import re

import pytest

from fastlimit import ConfigurationError, Rate

H = 3600 * 10**9


@pytest.mark.parametrize(
    "text, limit, period_s",
    [
        ("100/1h", 100, 3600),
        ("100/hour", 100, 3600),
        ("100 per hour", 100, 3600),
        ("10/minute", 10, 60),
        ("10/m", 10, 60),
        ("5/30s", 5, 30),
        ("1000/1d", 1000, 86400),
        ("1000/24h", 1000, 86400),
        ("15/15m", 15, 900),
        ("3 per 2 hours", 3, 7200),
        ("  7 / 2 days ", 7, 172800),
        ("1/second", 1, 1),
        ("2/1w", 2, 604800),
    ],
)
def test_parse_accepted_forms(text, limit, period_s):
    rate = Rate.parse(text)
    assert (rate.limit, rate.period_ns) == (limit, period_s * 10**9)
    assert rate.period == period_s


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "cannot parse rate ''"),
        ("100", "cannot parse rate '100'"),
        ("abc/1h", "cannot parse rate 'abc/1h'"),
        ("-5/1h", "cannot parse rate '-5/1h'"),
        ("1.5/1h", "cannot parse rate '1.5/1h'"),
        ("0/1h", "between 1 and"),
        ("5/0s", "empty window"),
        ("100/1fortnight", "unknown unit 'fortnight'"),
        ("10000000000/1s", "between 1 and 1000000000"),
        ("1/99999d", "period must be between 1 second and 3660 days"),
        ("500/month", "use fastlimit.Quota"),
        ("5/h/x", "cannot parse rate"),
    ],
)
def test_parse_rejects_with_the_bad_text_and_the_accepted_forms(text, fragment):
    with pytest.raises(ConfigurationError) as err:
        Rate.parse(text)
    assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_parse_error_lists_accepted_forms():
    with pytest.raises(ConfigurationError, match="'100/1h', '100/hour', '100 per hour'"):
        Rate.parse("lots")


@pytest.mark.parametrize("value", [None, 100, 1.5, b"100/1h"])
def test_parse_rejects_non_text(value):
    with pytest.raises(ConfigurationError, match="must be a str"):
        Rate.parse(value)


def test_constructor_validates():
    with pytest.raises(ConfigurationError, match="must be an int"):
        Rate(1.5, H)
    with pytest.raises(ConfigurationError, match="must be an int"):
        Rate(True, H)
    with pytest.raises(ConfigurationError, match="period must be between"):
        Rate(10, 10)


def test_emission_interval_rounds_up():
    assert Rate.parse("100/1h").emission_interval_ns == 36 * 10**9
    assert Rate(3, 10**9).emission_interval_ns == 333_333_334


def test_str_is_canonical_and_round_trips():
    for text, canon in [("100 per hour", "100/1h"), ("5/30s", "5/30s"), ("10/minute", "10/1m"),
                        ("1000/1d", "1000/1d"), ("4/90s", "4/90s"), ("1/120m", "1/2h")]:
        rate = Rate.parse(text)
        assert str(rate) == canon
        assert Rate.parse(str(rate)) == rate


def test_parse_passes_rates_through():
    rate = Rate.parse("1/1s")
    assert Rate.parse(rate) is rate


@pytest.mark.parametrize("text", ["10 PER HOUR", "10 Per Hour", "10/HOUR", "10 per HOUR"])
def test_per_and_units_are_read_in_any_case(text):
    assert Rate.parse(text) == Rate(10, H)


def test_a_capital_m_is_refused_as_ambiguous():
    with pytest.raises(ConfigurationError, match="'M' could be minutes or months"):
        Rate.parse("5/1M")
    assert Rate.parse("5/1m") == Rate(5, 60 * 10**9)


def test_a_yearly_rate_is_pointed_to_something_that_exists():
    with pytest.raises(ConfigurationError, match="'3/365d'") as caught:
        Rate.parse("3 per year")
    hinted = str(caught.value).split("e.g. ")[1].strip("'")
    assert Rate.parse(hinted) == Rate(3, 365 * 86400 * 10**9)


@pytest.mark.parametrize("text", ["10/second;1000/day", "10/second, 1000/day",
                                  "10/second|1000/day", " 10/1s ; 1000/1d ",
                                  ["10/1s", "1000/1d"]])
def test_several_rates_in_one_string_or_list(text):
    assert Rate.parse_many(text) == (Rate(10, 10**9), Rate(1000, 24 * H))


@pytest.mark.parametrize("text, fragment", [
    ("", "at least one rate"),
    (";", "at least one rate"),
    ("10/1s;10/1s", "the same rate is given twice"),
    ("10/1s;ten/1d", "cannot parse rate 'ten/1d'"),
    (42, "or a list of them, got 42"),
])
def test_several_rates_refused_with_the_reason(text, fragment):
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        Rate.parse_many(text)


def test_one_rate_expected_says_where_several_go():
    with pytest.raises(ConfigurationError, match="is several rates, and one is expected"):
        Rate.parse("10/1s;1000/1d")
