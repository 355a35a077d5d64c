"""An oracle of one policy's rules, written from the README and DESIGN.md
with no code of fastlimit's but the GCRA model (tests/model.py): which
limits a request is subject to, how it is counted, and what it is answered.

It knows the policy of tests/test_decision_path.py only (its routes are
matched by hand), which is the point: an independent account of the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from model import Model

S = 10**9
TIER_RATES = {"GOLD": (8, 60), "FREE": (4, 3600), "CAPPED": (5, 60)}
RATES = {"session": (6, 3600), "token": (4, 60), "anonymous": (2, 3600)}
OCR_QUOTA = 4  # CAPPED's ocr per month
IMAGE_CAP = 100  # CAPPED's image_file_bytes
UPLOADS = {"GOLD": 2}  # concurrent uploads
NAMES = {"api_key": "api", "session": "session", "token": "token", "anonymous": "anonymous"}


def rate(limit: int, period_s: int) -> tuple[int, int]:
    return limit, period_s * S


@dataclass
class Limit:
    name: str      # the limit's name (headers, body)
    bucket: str    # where its state lives
    key: str
    limit: int
    period_ns: int
    shadow: bool = False
    quota: bool = False


@dataclass
class Answer:
    allowed: bool
    status: int | None
    kind: str | None
    headers: dict[str, str]
    limit: str | None


@dataclass
class PolicyModel:
    wall0_ns: int
    overrides: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    models: dict[tuple[str, int, int], Model] = field(default_factory=dict)
    tats: dict[tuple[str, str], int] = field(default_factory=dict)
    quota_used: dict[str, int] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)

    def limits(self, method: str, path: str, identity, ip: str) -> tuple[list[Limit], str | None]:
        """The limits of a request, in order, and the tier (API keys)."""
        kind, subject, tier = "anonymous", None, None
        if identity is not None and identity.subject:
            if identity.kind in ("session", "token"):
                kind, subject = identity.kind, identity.subject
            elif identity.kind == "api_key":
                if TIER_RATES.get(identity.tier) is None:
                    raise ValueError("unknown tier")
                if identity.tier != "FREE":  # FREE has no API access: anonymous
                    kind, subject, tier = "api_key", identity.account or identity.subject, \
                        identity.tier
        out: list[Limit] = []
        dedicated = method == "POST" and path == "/bulk"
        if not dedicated:
            key = subject if subject is not None else ip
            if kind == "api_key":
                lim, period = rate(*TIER_RATES[tier])
            else:
                lim, period = rate(*RATES[kind])
            name = NAMES[kind]
            lim, period = self.overrides.get((name, key), (lim, period))
            out.append(Limit(name, f"lane/{name}", key, lim, period))
        if method == "POST" and path == "/login":
            out.append(Limit("POST /login", "lane/POST /login", ip, *rate(2, 3600)))
        if dedicated:
            out.append(Limit("POST /bulk", "lane/POST /bulk", ip, *rate(3, 60)))
        if method in ("GET", "HEAD") and path == "/audit":
            out.append(Limit("GET /audit", "lane/GET /audit", ip, *rate(2, 60), shadow=True))
        if path.startswith("/files/") and path.count("/") >= 3:  # "* /files/{id}/**"
            name = "files"
            per = subject if subject is not None else ip
            if kind == "anonymous":
                out.append(Limit(name, "lane/files#anonymous", per, *rate(1, 60)))
            else:
                out.append(Limit(name, "lane/files", per, *rate(3, 60)))
        if tier == "CAPPED" and method == "POST" and path == "/ocr":
            out.append(Limit("ocr", "ocr", subject, OCR_QUOTA, 0, quota=True))
        return out, tier

    def _model(self, lim: Limit) -> Model:
        t = -(-lim.period_ns // lim.limit)
        key = (lim.bucket, t, lim.limit)
        if key not in self.models:
            self.models[key] = Model(t, lim.limit)
        m = self.models[key]
        # one state per (bucket, key) whatever the rate: the tat carries over
        if (lim.bucket, lim.key) in self.tats:
            m.tat[lim.key] = self.tats[(lim.bucket, lim.key)]
        else:
            m.tat.pop(lim.key, None)
        return m

    def _check(self, lim: Limit, now: int, cost: int, consume: bool):
        if lim.quota:  # a hit of 0 asks as a peek of 1
            used = self.quota_used.get(lim.key, 0)
            passed = used + (cost or 1) <= lim.limit
            if passed and consume and cost:
                self.quota_used[lim.key] = used + cost
            after = self.quota_used.get(lim.key, 0)
            return passed, lim.limit - after, None
        m = self._model(lim)
        answer = m.hit(lim.key, now, cost, consume=consume)
        if consume and lim.key in m.tat:
            self.tats[(lim.bucket, lim.key)] = m.tat[lim.key]
        return answer.allowed, answer.remaining, answer

    def hit(self, method: str, path: str, identity, ip: str, now: int, cost: int,
            length: int | None, month_left_ns: int) -> Answer:
        limits, tier = self.limits(method, path, identity, ip)
        for lim in limits:
            if not lim.shadow and cost > lim.limit:
                raise OverflowError("a cost above a burst")  # the 413 of the middleware
        peek_only = None
        if tier == "CAPPED" and method == "POST" and path == "/ocr" and length is not None \
                and length > IMAGE_CAP:
            peek_only = ("too_large", 413)
        lease_key = None
        if peek_only is None and tier in UPLOADS and method == "POST" and path == "/upload":
            owner = limits[0].key
            if self.leases.get(owner, 0) >= UPLOADS[tier]:
                peek_only = ("concurrency", 429)
            else:
                self.leases[owner] = self.leases.get(owner, 0) + 1
                lease_key = owner
        answers = []
        denied_at = None
        saved = (dict(self.tats), dict(self.quota_used))
        for i, lim in enumerate(limits):
            consume = peek_only is None and denied_at is None
            answers.append(self._check(lim, now, cost, consume))
            if not answers[-1][0] and not lim.shadow and denied_at is None:
                denied_at = i
        if denied_at is not None and peek_only is None:
            # none consumes if one denies: what was counted is given back
            self.tats, self.quota_used = saved
            # the answers after the denial are peeks; before it, the hits' own
        if (denied_at is not None or peek_only is not None) and lease_key is not None:
            self.leases[lease_key] -= 1
        kind = None
        status = None
        if peek_only is not None:
            kind, status = peek_only
        elif denied_at is not None:
            kind, status = ("quota" if limits[denied_at].quota else "rate"), 429
        headers: dict[str, str] = {}
        binding = None
        enforced = [i for i, lim in enumerate(limits) if not lim.shadow]
        if enforced:  # a 413 names it too, and sends no fields
            denials = [i for i in enforced if not answers[i][0]]
            if denials:
                binding = max(denials, key=lambda i: (
                    month_left_ns if limits[i].quota else answers[i][2].retry_after_ns))
            else:
                binding = min(enforced, key=lambda i: (answers[i][1],
                                                       -self._reset(limits[i], answers[i],
                                                                    month_left_ns)))
            lim, a = limits[binding], answers[binding]
        if binding is not None and kind != "too_large":
            reset = self._reset(lim, a, month_left_ns)
            headers = {"X-RateLimit-Limit": str(lim.limit),
                       "X-RateLimit-Remaining": str(a[1]),
                       "X-RateLimit-Reset": str(-(-reset // S))}
            if not a[0]:
                headers["Retry-After"] = str(self._retry(lim, a, month_left_ns))
        if kind == "concurrency":  # the longer of its own wait and the limits'
            headers["Retry-After"] = str(max(1, int(headers.get("Retry-After", 0))))
        return Answer(kind is None, status, kind, headers,
                      None if binding is None else limits[binding].name)

    @staticmethod
    def _reset(lim: Limit, a, month_left_ns: int) -> int:
        return month_left_ns if lim.quota else a[2].reset_after_ns

    @staticmethod
    def _retry(lim: Limit, a, month_left_ns: int) -> int:
        if lim.quota:
            return max(1, math.ceil(month_left_ns / S))
        d = a[2]
        t = -(-lim.period_ns // lim.limit)
        ahead = d.reset_after_ns
        free = lim.limit * t - ahead
        next_unit = 0 if ahead <= 0 else (max(0, free // t) + 1) * t - free
        return max(1, -(-d.retry_after_ns // S), -(-next_unit // S))

    def release(self, owner: str) -> None:
        self.leases[owner] -= 1
