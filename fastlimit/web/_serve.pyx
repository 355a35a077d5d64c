# cython: language_level=3
"""The middlewares' per-request path, compiled.

Every request the WSGI and ASGI middlewares see runs through here: their
call (``WSGICall``, ``ASGICall``), the request view (``ViewFields``), the
identity helpers (``HeaderIdentity``, ``FirstOf``) and the check
(``Check``, which is ``Gate.check``): client address, cost and identity,
then the policy's ``hit`` with ``(method, path, identity, client, cost,
content_length)``.  The middlewares know nothing of how a policy decides:
``hit`` is the policy's compiled decision path (``policy/_plan.pyx``),
called in C unless a policy subclass overrides it, and the decision's
header fields are the ones ``Policy.hit`` gives any caller.
"""

cimport cython

from cpython.object cimport PyObject, PyTypeObject, ternaryfunc

from fastlimit.policy._plan cimport Plan, PolicyDecision

from fastlimit.errors import CapacityError


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    void PyType_Modified(type cls)


cdef class ViewFields:
    """The fields of a :class:`fastlimit.web.RequestView` (its base), kept
    in C: the compiled middlewares make a request's view in a few stores."""

    cdef public object method, path, peer, client_ip, raw


cdef inline object _blank(type cls):
    """``cls.__new__(cls)`` (no __init__) in one C call: ``cls`` is a
    Python subclass of one of the classes here, and has their tp_new."""
    return (<PyTypeObject*>cls).tp_new(cls, <PyObject*>_NO_ARGS, NULL)


cdef tuple _NO_ARGS = ()


cdef inline object _get(mapping, key, default):
    # environs and scopes are dicts: their get() without a method call
    if type(mapping) is dict:
        return (<dict>mapping).get(key, default)
    return mapping.get(key, default)


cpdef object wsgi_view(ViewFields view, environ):
    """Fill ``view`` from a WSGI environ; return it."""
    view.raw = environ
    view.method = _get(environ, "REQUEST_METHOD", "GET")
    path = _get(environ, "SCRIPT_NAME", "") + _get(environ, "PATH_INFO", "")
    if not (PyUnicode_IS_ASCII(path) if type(path) is str else path.isascii()):
        # PEP 3333 hands over the path's bytes as latin-1 characters; a
        # server that broke that rule already gave text: keep it
        try:
            path = path.encode("latin-1").decode("utf-8", "replace")
        except UnicodeEncodeError:
            pass
    view.path = path or "/"
    view.peer = view.client_ip = _get(environ, "REMOTE_ADDR", None) or None
    return view


cpdef object asgi_view(ViewFields view, scope):
    """Fill ``view`` from an ASGI ``http`` scope; return it."""
    view.raw = scope
    view.method = _get(scope, "method", "GET")
    view.path = _get(scope, "path", None) or "/"
    client = _get(scope, "client", None)
    view.peer = view.client_ip = client[0] if client else None
    return view


cdef class Check:
    """The middlewares' request step (``Gate.check``): the client address
    (from trusted proxies), the cost, the identity, then the policy's
    ``hit``: its compiled decision path called in C, unless the policy
    overrides ``hit`` (then its own method is called).  A cost no limit can
    admit is answered 413 (``too_large(error)``).

    Args:
        gate: the :class:`fastlimit.web.gate.Gate` to take the parts from.
        plan: the policy's decision path, or None to call ``policy.hit``.
        view_types: the WSGI and ASGI view classes, whose fields are read
            straight from :class:`ViewFields` (other views by attribute).
    """

    cdef object hit, identify, proxies, cost, fixed_cost, no_address, too_large
    cdef object wsgi_view, asgi_view
    cdef Plan plan

    def __init__(self, gate, Plan plan, *, no_address, too_large, view_types):
        self.hit = gate.policy.hit
        self.plan = plan
        self.identify = gate.identify
        self.proxies = gate._proxies
        self.cost = gate.cost
        self.fixed_cost = gate._fixed_cost
        self.no_address = no_address
        self.too_large = too_large
        self.wsgi_view, self.asgi_view = view_types

    def __call__(self, view):
        """Count ``view`` under the policy: a ``PolicyDecision`` (or the
        413 answer to a cost no limit admits)."""
        return self._check(view)

    cdef object _check(self, view):
        if self.proxies is not None:
            view.client_ip = self.proxies(view)
        cost = self.fixed_cost if self.fixed_cost is not None else self.cost(view)
        identity = _identify(self.identify, view)
        if type(view) is self.wsgi_view:
            length = _get((<ViewFields>view).raw, "CONTENT_LENGTH", None)
            if length:  # the common case (a GET) costs one look-up
                length = view.content_length
            else:
                length = None
        else:
            length = view.content_length
        if type(view) is self.wsgi_view or type(view) is self.asgi_view:
            method = (<ViewFields>view).method
            path = (<ViewFields>view).path
            client = (<ViewFields>view).client_ip or self.no_address
        else:
            method = view.method
            path = view.path
            client = view.client_ip or self.no_address
        try:
            if self.plan is not None:
                return self.plan.decide(method, path, identity, client, cost, length, None, True)
            return self.hit(method, path, identity, client, cost=cost, content_length=length)
        except CapacityError as e:
            return self.too_large(e)


# Whether a header name (str or bytes, as the application wrote it) is a
# rate-limit field: applications send the same few names every response.
# One set of names is ever passed for str names (WSGI) and one for bytes
# (ASGI), and a str never equals a bytes, so one memory serves both.
cdef dict _RATE_FIELD = {}


cdef bint _is_rate_field(name, names) except -1:
    verdict = _RATE_FIELD.get(name)
    if verdict is None:
        if len(_RATE_FIELD) >= 4096:
            _RATE_FIELD.clear()
        verdict = _RATE_FIELD[name] = name.lower() in names
    return verdict is True


cdef class AddHeaders:
    """A WSGI ``start_response`` that adds ``extra`` to the application's
    headers; rate-limit fields the application set itself win (a check
    inside the application knows more)."""

    cdef object start_response, extra, names, merge

    def __init__(self, start_response, list extra, names, merge):
        self.start_response = start_response
        self.extra = extra
        self.names = names    # the rate-limit field names, lower case
        self.merge = merge    # merge(app_headers, extra): the headers when the app set some

    def __call__(self, status, headers, exc_info=None):
        names = self.names
        for name, _ in headers:
            if _is_rate_field(name, names):
                return self.start_response(status, self.merge(headers, self.extra), exc_info)
        # one new list: the application's may be used again
        return self.start_response(
            status, (<list>headers) + self.extra if type(headers) is list
            else list(headers) + self.extra, exc_info)


cdef class SendHeaders:
    """An ASGI ``send`` that adds ``extra`` (raw, lower-case names) to the
    response start, in a copy of the message (the application may send the
    same one again).  It returns ``send``'s own awaitable: no coroutine of
    its own."""

    cdef object send, extra, names, merge

    def __init__(self, send, list extra, names, merge):
        self.send = send
        self.extra = extra
        self.names = names    # the rate-limit field names, raw lower case
        self.merge = merge    # merge(app_headers, extra): when the app set some itself

    def __call__(self, message):
        if message["type"] == "http.response.start":
            message = dict(message)
            headers = message.get("headers")
            if not headers:
                message["headers"] = list(self.extra)
            else:
                names = self.names
                for name, _ in headers:
                    if _is_rate_field(name, names):
                        message["headers"] = self.merge(headers, self.extra)
                        break
                else:
                    message["headers"] = (<list>headers) + self.extra if type(headers) is list \
                        else list(headers) + self.extra
        return self.send(message)


cdef class _Call:
    """What both middlewares' per-request steps hold."""

    cdef public object app
    cdef public object gate
    cdef object check, exempt, deny, names, merge
    cdef type view_type
    cdef Check checker    # the gate's check when it is a Check (called in C)

    cdef _hold(self, view_type, deny, names, merge):
        self.check = self.gate.check
        self.checker = self.check if type(self.check) is Check else None
        self.exempt = self.gate.exempt_paths
        if not issubclass(view_type, ViewFields):
            raise TypeError(f"view_type must subclass ViewFields, got {view_type!r}")
        self.view_type = view_type
        self.deny = deny
        self.names = names
        self.merge = merge


cdef class WSGICall(_Call):
    """The WSGI middleware's per-request step (the base of
    :class:`fastlimit.wsgi.RateLimitMiddleware`, which sets it up)."""

    cdef object released

    def _wire(self, view_type, deny, released, names, merge):
        """Set the request view class, the denial answer ``deny(outcome,
        start_response)``, the response wrapper ``released(result,
        release)`` and the header merge (``AddHeaders``); after ``gate``."""
        self._hold(view_type, deny, names, merge)
        self.released = released

    def __call__(self, environ, start_response):
        view = wsgi_view(_blank(self.view_type), environ)
        if self.exempt and view.path in self.exempt:
            return self.app(environ, start_response)
        outcome = self.checker._check(view) if self.checker is not None else self.check(view)
        environ["fastlimit.decision"] = outcome
        cdef PolicyDecision decided = outcome if type(outcome) is PolicyDecision else None
        if decided is not None and decided.allowed and not decided.holds():
            # nothing to give back: the response goes out as the app made it
            extra = decided.headers
            return self.app(environ, AddHeaders(start_response, extra, self.names, self.merge)
                            if extra else start_response)
        if not outcome.allowed:
            return self.deny(outcome, start_response)
        extra = outcome.headers
        respond = AddHeaders(start_response, extra, self.names, self.merge) if extra \
            else start_response
        if not getattr(outcome, "holding", True):  # nothing to give back: pass it on as is
            return self.app(environ, respond)
        try:
            result = self.app(environ, respond)
        except BaseException:
            outcome.release()
            raise
        return self.released(result, outcome.release)


cdef class ASGICall(_Call):
    """The ASGI middleware's per-request step (the base of
    :class:`fastlimit.asgi.RateLimitMiddleware`, which sets it up)."""

    cdef object encode

    def _wire(self, view_type, deny, encode, names, merge):
        """Set the request view class, the denial answer ``deny(outcome,
        send)``, ``encode(headers)`` to raw headers and the merge of
        :class:`SendHeaders`; after ``gate``."""
        self._hold(view_type, deny, names, merge)
        self.encode = encode

    async def handle(self, scope, receive, send):
        """The ASGI application call (the middleware's ``__call__``: a
        coroutine function, as servers check)."""
        await self._start(scope, receive, send)

    cdef object _start(self, scope, receive, send):
        """The awaitable that answers the request: the application's own
        coroutine when the decision holds nothing (no frame of ours in
        between), else one that gives back what it holds at the end."""
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        view = asgi_view(_blank(self.view_type), scope)
        if self.exempt and view.path in self.exempt:
            return self.app(scope, receive, send)
        outcome = self.checker._check(view) if self.checker is not None else self.check(view)
        scope["fastlimit.decision"] = outcome
        cdef PolicyDecision decided = outcome if type(outcome) is PolicyDecision else None
        if decided is not None and decided.allowed and not decided.holds():  # holds nothing
            extra = decided.fields(True)
            return self.app(scope, receive,
                            SendHeaders(send, extra, self.names, self.merge) if extra else send)
        return self._answer(outcome, scope, receive, send)

    async def _answer(self, outcome, scope, receive, send):
        try:
            if not outcome.allowed:
                await self.deny(outcome, send)
                return
            extra = outcome.headers
            if not extra:
                await self.app(scope, receive, send)
                return
            await self.app(scope, receive,
                           SendHeaders(send, self.encode(extra), self.names, self.merge))
        finally:
            if getattr(outcome, "holding", True):
                outcome.release()


# Servers tell an ASGI 3 application by its __call__ being a coroutine
# function, so the middleware's __call__ is ASGICall.handle.  Calling that
# makes a coroutine of ours around the application's, for nothing: the
# awaitable _start returns does the same.  So the type's call slot, which
# is what ``middleware(scope, receive, send)`` runs (servers call it and
# await what it returns at once), goes straight to _start.  Assigning
# __call__ on the class later resets the slot, as for any class.
cdef object _call_start(object self, object args, object kwargs):
    if <void*>kwargs != NULL or len(<tuple>args) != 3:
        return ASGICall.handle(self, *args, **(kwargs if <void*>kwargs != NULL else {}))
    return (<ASGICall>self)._start((<tuple>args)[0], (<tuple>args)[1], (<tuple>args)[2])


def start_directly(type cls):
    """Make calls of ``cls`` (a subclass of :class:`ASGICall` whose
    ``__call__`` is ``ASGICall.handle``) start the request in C."""
    if not issubclass(cls, ASGICall) or getattr(cls, "__call__", None) is not ASGICall.handle:
        raise TypeError(f"{cls!r} is not an ASGICall whose __call__ is ASGICall.handle")
    (<PyTypeObject*>cls).tp_call = <ternaryfunc>_call_start
    PyType_Modified(cls)


def scope_header(headers, bytes wanted):
    """The value of raw header ``wanted`` (lower case) in an ASGI scope's
    ``headers``, as text, or None; repeated headers joined with ``,``."""
    first = None
    more = None
    for key, value in headers:
        if key == wanted:
            if first is None:
                first = value
            elif more is None:
                more = [first, value]
            else:
                more.append(value)
    if more is not None:
        return b",".join(more).decode("latin-1")
    return None if first is None else first.decode("latin-1")


cdef dict _RAW_NAMES = {}


def encode_headers(list headers):
    """Text header pairs as ASGI raw ones: names in lower case, latin-1."""
    out = []
    for name, value in headers:
        raw = _RAW_NAMES.get(name)
        if raw is None:
            if len(_RAW_NAMES) >= 1024:  # names come from the policy: a handful
                _RAW_NAMES.clear()
            raw = _RAW_NAMES[name] = name.lower().encode("latin-1")
        out.append((raw, value.encode("latin-1")))
    return out


cdef class HeaderIdentity:
    """``identify(view)`` for a credential sent in a request header: the
    callable :func:`fastlimit.web.api_key_header` and
    :func:`fastlimit.web.bearer_token` return.

    The header is read straight from the WSGI environ or the ASGI scope
    (other views: ``view.header``).  ``kind`` is ``"api_key"`` (``lookup``
    gives ``(tier, account)``) or ``"token"`` (an ``Authorization: Bearer``
    value; ``lookup`` gives the subject)."""

    cdef object lookup, identity_type, invalid, wsgi_view, asgi_view
    cdef str name, environ_key
    cdef bytes raw_name
    cdef bint token
    # credential -> (what lookup gave, its Identity): the Identity is made
    # again only when lookup gives something else (the same object also
    # keeps a caller's Identity one object across its requests)
    cdef dict known

    def __init__(self, str kind, lookup, str name, str environ_key, bytes raw_name,
                 identity_type, invalid, wsgi_view, asgi_view):
        if kind not in ("api_key", "token"):
            raise ValueError(f"kind must be 'api_key' or 'token', got {kind!r}")
        self.token = kind == "token"
        self.lookup = lookup
        self.name = name
        self.environ_key = environ_key
        self.raw_name = raw_name
        self.identity_type = identity_type  # Identity: made without its keyword handling
        self.invalid = invalid    # the Identity of a credential that failed
        self.wsgi_view = wsgi_view
        self.asgi_view = asgi_view
        self.known = {}

    def __call__(self, view):
        return self._find(view)

    cdef object _find(self, view):
        kind = type(view)
        if kind is self.wsgi_view:
            value = _get((<ViewFields>view).raw, self.environ_key, None)
        elif kind is self.asgi_view:
            value = scope_header(_get((<ViewFields>view).raw, "headers", ()), self.raw_name)
        else:
            value = view.header(self.name)
        if not value:
            return None
        if not self.token:
            found = self.lookup(value)
            if found is None:
                return self.invalid
        else:
            scheme, _, value = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            value = value.strip()
            found = self.lookup(value) if value else None
            if not found:
                return self.invalid
        known = self.known.get(value)
        if known is not None and (<tuple>known)[0] == found:
            return (<tuple>known)[1]
        if self.token:
            identity = tuple.__new__(self.identity_type, ("token", found, None, None))
        else:
            tier, account = found
            identity = tuple.__new__(self.identity_type, ("api_key", value, tier, account))
        if len(self.known) >= 4096:  # only credentials lookup accepted: few
            self.known = {}
        self.known[value] = (found, identity)
        return identity


cdef class FirstOf:
    """``identify(view)``: the first identity any of ``identifiers`` finds
    (None when none does): what :func:`fastlimit.web.first_of` returns."""

    cdef tuple identifiers

    def __init__(self, identifiers):
        self.identifiers = tuple(identifiers)

    def __call__(self, view):
        return self._first(view)

    cdef object _first(self, view):
        for each in self.identifiers:
            found = _identify(each, view)
            if found is not None:
                return found
        return None


cdef object _identify(identify, view):
    """``identify(view)``; the compiled identifiers called in C."""
    if type(identify) is HeaderIdentity:
        return (<HeaderIdentity>identify)._find(view)
    if type(identify) is FirstOf:
        return (<FirstOf>identify)._first(view)
    return identify(view)
