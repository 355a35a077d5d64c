"""Policies: every limit of an API in one place, enforced per request.

- :mod:`.identity`: who makes a request (:class:`~fastlimit.Identity`);
- :mod:`.spec` and :mod:`.config`: the policy as data, and its TOML loader;
- :mod:`.routes`: route patterns and their lookup;
- :mod:`.overrides`: run-time rates for one subject, shared by every process;
- :mod:`.policy`: :class:`~fastlimit.Policy`, which answers each request
  (:class:`~fastlimit.PolicyDecision`).
"""

from fastlimit.policy.identity import Identity
from fastlimit.policy.policy import Policy, PolicyDecision, Resolution

__all__ = ["Identity", "Policy", "PolicyDecision", "Resolution"]
