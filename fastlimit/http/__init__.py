"""HTTP answers: the rate-limit header fields and 429 bodies a decision is
written as (:mod:`fastlimit.http.headers`, rendered by compiled code in
``_fields``)."""
