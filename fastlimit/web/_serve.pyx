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
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.stdint cimport uint32_t, uint64_t

from fastlimit.policy._plan cimport Plan, PolicyDecision
from fastlimit.http._addr cimport ipv4

from fastlimit.errors import CallbackError, CapacityError, ConfigurationError


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    void PyType_Modified(type cls)
    Py_UCS4 PyUnicode_READ_CHAR(object text, Py_ssize_t index)
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch)
    str PyUnicode_Substring(object text, Py_ssize_t start, Py_ssize_t end)
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2


cdef extern from *:
    """
    /* tuple.__new__(cls, (a, b, c, d)) for a tuple subclass without a
       __dict__ (Identity), as tuple's own tp_new makes it, without the
       call through tuple.__new__ and the argument tuple */
    static PyObject* fl_new_identity(PyObject* cls, PyObject* a, PyObject* b, PyObject* c,
                                     PyObject* d) {
        PyTypeObject* t = (PyTypeObject*)cls;
        PyObject* o = t->tp_alloc(t, 4);
        if (o == NULL) return NULL;
        Py_INCREF(a); PyTuple_SET_ITEM(o, 0, a);
        Py_INCREF(b); PyTuple_SET_ITEM(o, 1, b);
        Py_INCREF(c); PyTuple_SET_ITEM(o, 2, c);
        Py_INCREF(d); PyTuple_SET_ITEM(o, 3, d);
        return o;
    }
    """
    object fl_new_identity(object cls, object a, object b, object c, object d)


cdef inline object _new_identity(cls, kind, subject, tier, account):
    return fl_new_identity(cls, kind, subject, tier, account)


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


cpdef object wsgi_view(ViewFields view, environ, str mount=""):
    """Fill ``view`` from a WSGI environ; return it.  Its path is
    ``PATH_INFO``, what the application routes on (``SCRIPT_NAME``, where
    the server or a dispatcher mounted it, is not part of it: a client may
    even set it, through a server that honours a ``SCRIPT_NAME`` header),
    after ``mount`` if given."""
    view.raw = environ
    view.method = _get(environ, "REQUEST_METHOD", "GET")
    path = _get(environ, "PATH_INFO", "")
    if not (PyUnicode_IS_ASCII(path) if type(path) is str else path.isascii()):
        # PEP 3333 hands over the path's bytes as latin-1 characters; a
        # server that broke that rule already gave text: keep it
        try:
            path = path.encode("latin-1").decode("utf-8", "replace")
        except UnicodeEncodeError:
            pass
    view.path = mount + path if mount else path or "/"
    view.peer = view.client_ip = _get(environ, "REMOTE_ADDR", None) or None
    return view


cpdef object asgi_view(ViewFields view, scope, str mount=""):
    """Fill ``view`` from an ASGI ``http`` scope; return it.  Its path is
    what the application routes on: ``scope["path"]`` without the
    ``root_path`` it starts with (as Starlette routes: uvicorn's
    ``--root-path`` and ``Mount`` put the prefix in both), after ``mount``
    if given."""
    cdef Py_ssize_t n
    view.raw = scope
    view.method = _get(scope, "method", "GET")
    path = _get(scope, "path", None) or "/"
    root = _get(scope, "root_path", None)
    if root and type(root) is str and type(path) is str and (<str>path).startswith(root):
        n = PyUnicode_GET_LENGTH(root)
        if PyUnicode_GET_LENGTH(path) == n:
            path = "/"
        elif PyUnicode_READ_CHAR(path, n) == 47:    # "/": a whole segment, not /apiary
            path = PyUnicode_Substring(path, n, PyUnicode_GET_LENGTH(path))
    view.path = mount + path if mount else path
    client = _get(scope, "client", None)
    view.peer = view.client_ip = client[0] if client else None
    return view


cdef class Check:
    """The middlewares' request step (``Gate.check``): the client address
    (from trusted proxies), the cost, the identity, then the policy's
    ``hit``: its compiled decision path called in C, unless the policy
    overrides ``hit`` (then its own method is called).  A cost no limit can
    admit is answered 413 (``too_large(error)``); a callback's mistake (or
    another :class:`~fastlimit.ConfigurationError` met while deciding) is
    answered by ``misconfigured(error)`` (a 500, logged once per mistake).

    Args:
        gate: the :class:`fastlimit.web.gate.Gate` to take the parts from.
        plan: the policy's decision path, or None to call ``policy.hit``.
        view_types: the WSGI and ASGI view classes, whose fields are read
            straight from :class:`ViewFields` (other views by attribute).
    """

    cdef object hit, identify, proxies, cost, fixed_cost, no_address, too_large, files
    cdef object misconfigured, identity_type
    cdef object wsgi_view, asgi_view
    cdef Header length_header
    cdef Plan plan

    def __init__(self, gate, Plan plan, *, no_address, too_large, misconfigured,
                 identity_type, view_types):
        self.hit = gate.policy.hit
        self.plan = plan
        self.identify = gate.identify
        self.proxies = gate._proxies
        self.cost = gate.cost
        self.fixed_cost = gate._fixed_cost
        self.files = gate.files
        self.no_address = no_address
        self.too_large = too_large
        self.misconfigured = misconfigured
        self.identity_type = identity_type
        self.wsgi_view, self.asgi_view = view_types
        self.length_header = Header("content-length", "CONTENT_LENGTH", b"content-length",
                                    *view_types)

    def __call__(self, view):
        """Count ``view`` under the policy: a ``PolicyDecision`` (or the
        413 answer to a cost no limit admits)."""
        return self._check(view)

    cdef object _check(self, view):
        try:
            return self._decide(view)
        except ConfigurationError as e:
            return self.misconfigured(e)

    cdef object _decide(self, view):
        if self.proxies is not None:
            view.client_ip = ((<ClientAddress>self.proxies).find(view)
                              if type(self.proxies) is ClientAddress else self.proxies(view))
        if self.fixed_cost is not None:
            cost = self.fixed_cost
        else:
            cost = self.cost(view)
            if type(cost) is not int or cost < 0:
                raise CallbackError.returned("cost", self.cost, cost, "an int >= 0")
        identity = _identify(self.identify, view)
        if identity is not None and type(identity) is not self.identity_type and not \
                isinstance(identity, self.identity_type):
            raise CallbackError.returned(
                "identify", self.identify, identity,
                "a fastlimit.Identity, or None for a caller without a credential")
        if self.files is None:
            files = None
        else:
            files = self.files(view)
            if files is not None and (type(files) is not int or files < 0):
                raise CallbackError.returned("files", self.files, files,
                                             "an int >= 0, or None")
        if type(view) is self.wsgi_view or type(view) is self.asgi_view:
            # the common case (a GET) costs one look-up, in C
            length = view.content_length if self.length_header.read(view) else None
            method = (<ViewFields>view).method
            path = (<ViewFields>view).path
            client = (<ViewFields>view).client_ip or self.no_address
        else:
            length = view.content_length
            method = view.method
            path = view.path
            client = view.client_ip or self.no_address
        try:
            if self.plan is not None:
                return self.plan.decide(method, path, identity, client, cost, length, files, True)
            return self.hit(method, path, identity, client, cost=cost, content_length=length,
                            files=files)
        except CapacityError as e:
            return self.too_large(e)


@cython.final
cdef class FieldNames:
    """The rate-limit field names, asked of every header the application
    sets: most names are told apart by their first byte and length alone,
    with no lower-cased copy made (and nothing remembered per name)."""

    cdef frozenset names
    cdef unsigned char first[256]   # 1: some name starts with this byte (either case)
    cdef uint64_t lengths           # bit n: some name is n long (bit 63: 63 or longer)

    def __init__(self, names):
        self.names = frozenset(names)
        for name in self.names:
            c = name[0] if isinstance(name, bytes) else ord(name[0])
            if c >= 256:
                raise ValueError(f"a field name must be latin-1, got {name!r}")
            self.first[c] = 1
            if 97 <= c <= 122:      # a-z: its upper case too
                self.first[c - 32] = 1
            self.lengths |= (<uint64_t>1) << min(len(name), 63)

    cdef bint has(self, name) except -1:
        cdef Py_ssize_t c = -1, n = 0
        if type(name) is bytes:
            n = len(<bytes>name)
            if n:
                c = (<bytes>name)[0]
        elif type(name) is str:
            n = PyUnicode_GET_LENGTH(name)
            if n:
                c = PyUnicode_READ_CHAR(name, 0)
        if 0 <= c < 256 and not (self.first[c] and self.lengths >> min(n, 63) & 1):
            return False
        return name.lower() in self.names


cdef inline FieldNames _field_names(names):
    return <FieldNames>names if type(names) is FieldNames else FieldNames(names)


cdef class AddHeaders:
    """A WSGI ``start_response`` that adds ``extra`` to the application's
    headers; rate-limit fields the application set itself win (a check
    inside the application knows more)."""

    cdef object start_response, extra, merge
    cdef FieldNames names

    def __init__(self, start_response, list extra, names, merge):
        self.start_response = start_response
        self.extra = extra
        self.names = _field_names(names)    # the rate-limit field names, lower case
        self.merge = merge    # merge(app_headers, extra): the headers when the app set some

    def __call__(self, status, headers, exc_info=None):
        cdef FieldNames names = self.names
        for name, _ in headers:
            if names.has(name):
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

    cdef object send, extra, merge
    cdef FieldNames names

    def __init__(self, send, list extra, names, merge):
        self.send = send
        self.extra = extra
        self.names = _field_names(names)    # the rate-limit field names, raw lower case
        self.merge = merge    # merge(app_headers, extra): when the app set some itself

    def __call__(self, message):
        cdef FieldNames names
        if message["type"] == "http.response.start":
            message = dict(message)
            headers = message.get("headers")
            if not headers:
                message["headers"] = list(self.extra)
            else:
                names = self.names
                for name, _ in headers:
                    if names.has(name):
                        message["headers"] = self.merge(headers, self.extra)
                        break
                else:
                    message["headers"] = (<list>headers) + self.extra if type(headers) is list \
                        else list(headers) + self.extra
        return self.send(message)


cpdef list denial_headers(outcome, bytes body):
    """The headers of a denial: its content type and length, then the
    policy's headers (Retry-After included)."""
    cdef PolicyDecision d
    if type(outcome) is PolicyDecision:
        d = <PolicyDecision>outcome
        return [("Content-Type", d._response().content_type),
                ("Content-Length", str(len(body))), *d.text_fields()]
    return [("Content-Type", outcome.content_type), ("Content-Length", str(len(body))),
            *outcome.headers]


@cython.final
cdef class WSGIDenial:
    """``deny(outcome, start_response)``: the WSGI answer to a denied
    request (the application is not called), with the policy's status,
    headers and body.  ``status_line(status)`` makes ``"429 Too Many
    Requests"``; ``released(result, release)`` wraps a response whose
    outcome still holds something."""

    cdef object status_line, released
    cdef dict lines     # status -> its line: the policy's few statuses

    def __init__(self, status_line, released):
        self.status_line = status_line
        self.released = released
        self.lines = {}

    def __call__(self, outcome, start_response):
        cdef PolicyDecision d = outcome if type(outcome) is PolicyDecision else None
        cdef bint holding
        try:
            if d is not None:
                body = d.denial_body()
                status = d._response().status
            else:
                body = outcome.body or b""
                status = outcome.status
            line = self.lines.get(status)
            if line is None:
                line = self.status_line(status)
                if len(self.lines) < 1000:
                    self.lines[status] = line
            start_response(line, denial_headers(outcome, body))
        except BaseException:
            outcome.release()
            raise
        holding = d.holds() if d is not None else getattr(outcome, "holding", True)
        return self.released([body], outcome.release) if holding else [body]


cdef class _Call:
    """What both middlewares' per-request steps hold."""

    cdef public object app
    cdef public object gate
    cdef object check, exempt, exempt_under, deny, names, merge
    cdef object watch     # the gate's look at the first requests, until it is done
    cdef str mount
    cdef type view_type
    cdef Check checker    # the gate's check when it is a Check (called in C)
    cdef bint disabled    # enabled=False: every request passes, uncounted

    cdef _hold(self, view_type, deny, names, merge):
        self.disabled = not self.gate.enabled
        self.check = self.gate.check
        self.mount = self.gate.mount
        self.watch = self.gate.watch
        self.checker = self.check if type(self.check) is Check else None
        self.exempt = self.gate.exempt_paths
        self.exempt_under = self.gate.exempt_under
        if not issubclass(view_type, ViewFields):
            raise TypeError(f"view_type must subclass ViewFields, got {view_type!r}")
        self.view_type = view_type
        self.deny = deny
        self.names = FieldNames(names)
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
        if self.disabled:
            return self.app(environ, start_response)
        view = wsgi_view(_blank(self.view_type), environ, self.mount)
        if self.watch is not None and not self.watch(view):
            self.watch = None
        path = (<ViewFields>view).path  # the view is made here: its slot, no attribute look-up
        if self.exempt and path in self.exempt or (
                self.exempt_under is not None and self.exempt_under(path)):
            return self.app(environ, start_response)
        outcome = self.checker._check(view) if self.checker is not None else self.check(view)
        environ["fastlimit.decision"] = outcome
        cdef PolicyDecision decided = outcome if type(outcome) is PolicyDecision else None
        if decided is not None and decided.caps is not None and decided.allowed:
            cap = decided.byte_cap()
            if cap is not None:  # an upload route: its body is counted as it is read
                return self._stream_capped(environ, start_response, decided, cap)
        if decided is not None and decided.allowed and not decided.holds():
            # nothing to give back: the response goes out as the app made it
            extra = decided.text_fields()
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
        if scope["type"] != "http" or self.disabled:
            return self.app(scope, receive, send)
        view = asgi_view(_blank(self.view_type), scope, self.mount)
        if self.watch is not None and not self.watch(view):
            self.watch = None
        path = (<ViewFields>view).path  # the view is made here: its slot, no attribute look-up
        if self.exempt and path in self.exempt or (
                self.exempt_under is not None and self.exempt_under(path)):
            return self.app(scope, receive, send)
        outcome = self.checker._check(view) if self.checker is not None else self.check(view)
        if type(outcome) is PolicyDecision and (<PolicyDecision>outcome).pending is not None:
            return self._settle(outcome, scope, receive, send)  # an asyncio store counts it
        return self._proceed(outcome, scope, receive, send)

    async def _settle(self, PolicyDecision decision, scope, receive, send):
        """A decision an asyncio store is still to count: awaited (the event
        loop runs on meanwhile), then answered as any other."""
        try:
            outcome = await decision.settle()
        except ConfigurationError as e:
            if self.checker is None:
                raise
            outcome = self.checker.misconfigured(e)
        await self._proceed(outcome, scope, receive, send)

    cdef object _proceed(self, outcome, scope, receive, send):
        scope["fastlimit.decision"] = outcome
        cdef PolicyDecision decided = outcome if type(outcome) is PolicyDecision else None
        if decided is not None and decided.caps is not None and decided.allowed:
            cap = decided.byte_cap()
            if cap is not None:  # an upload route: its body is counted as it is read
                return self._stream_capped(scope, receive, send, decided, cap)
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
                given = outcome.release()
                if given is not None:  # an asyncio store's releases
                    await given


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


cpdef scope_header(headers, bytes wanted):
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


@cython.final
cdef class Header:
    """One request header, read straight from a WSGI environ or an ASGI
    scope (other views: ``view.header(name)``): what
    :func:`fastlimit.web.view.header_reader` makes."""

    cdef readonly str name
    cdef str environ_key
    cdef bytes raw_name
    cdef object wsgi_view, asgi_view

    def __init__(self, str name, str environ_key, bytes raw_name, wsgi_view, asgi_view):
        self.name = name
        self.environ_key = environ_key
        self.raw_name = raw_name
        self.wsgi_view = wsgi_view
        self.asgi_view = asgi_view

    def __call__(self, view):
        """The header's value in ``view``, or None."""
        return self.read(view)

    cdef object read(self, view):
        kind = type(view)
        if kind is self.wsgi_view:
            return _get((<ViewFields>view).raw, self.environ_key, None)
        if kind is self.asgi_view:
            return scope_header(_get((<ViewFields>view).raw, "headers", ()), self.raw_name)
        return view.header(self.name)


cpdef object cookie_value(str header, str name):
    """The value of cookie ``name`` in a ``Cookie`` header, or None
    (``RequestView.cookie``)."""
    if not header or name not in header:
        return None
    for part in header.replace(",", ";").split(";"):
        key, eq, value = (<str>part).partition("=")
        if eq and (<str>key).strip() == name:
            value = (<str>value).strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


cdef enum:
    C_API_KEY = 0
    C_TOKEN = 1
    C_SESSION = 2


cdef class HeaderIdentity:
    """``identify(view)`` for a credential sent in a request header: the
    callable :func:`fastlimit.web.api_key_header`,
    :func:`fastlimit.web.bearer_token` and
    :func:`fastlimit.web.session_cookie` return.

    ``kind`` is ``"api_key"`` (``lookup`` gives ``(tier, account)``),
    ``"token"`` (an ``Authorization: Bearer`` value; ``lookup`` gives the
    subject) or ``"session"`` (the value of ``cookie`` in ``Cookie``;
    ``lookup`` gives the subject)."""

    cdef object lookup, identity_type, invalid
    cdef Header header
    cdef int kind
    cdef str cookie

    def __init__(self, str kind, lookup, Header header not None, identity_type, invalid,
                 str cookie=None):
        if kind not in ("api_key", "token", "session"):
            raise ValueError(f"kind must be 'api_key', 'token' or 'session', got {kind!r}")
        self.kind = ("api_key", "token", "session").index(kind)
        if self.kind == C_SESSION and not cookie:
            raise ValueError("a session identity needs the cookie's name")
        self.cookie = cookie
        self.lookup = lookup
        self.header = header
        if not (isinstance(identity_type, type) and issubclass(identity_type, tuple)):
            raise TypeError(f"identity_type must be a tuple subclass, got {identity_type!r}")
        self.identity_type = identity_type  # Identity: made in C, as tuple.__new__ makes it
        self.invalid = invalid    # the Identity of a credential that failed

    def __call__(self, view):
        return self._find(view)

    @property
    def kinds(self):
        """The identity kinds it gives (besides None, and the invalid
        identity, which counts as anonymous)."""
        return frozenset({("api_key", "token", "session")[self.kind]})

    cdef object _find(self, view):
        value = self.header.read(view)
        if not value:
            return None
        if self.kind == C_API_KEY:
            found = self.lookup(value)
            if found is None:
                return self.invalid
            if type(found) is not tuple or len(<tuple>found) != 2 or not (
                    found[0] is None or type(found[0]) is str) or not (
                    found[1] is None or type(found[1]) is str):
                raise CallbackError.returned(
                    "the lookup of api_key_header", self.lookup, found,
                    "a (tier, account) tuple of str (account may be None) for a valid "
                    "key, else None")
        elif self.kind == C_TOKEN:
            scheme, _, value = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            value = value.strip()
            found = self.lookup(value) if value else None
            if not found:
                return self.invalid
            if type(found) is not str:
                found = _not_subject("the lookup of bearer_token", self.lookup, found)
        else:
            value = cookie_value(value, self.cookie)
            if not value:
                return None
            found = self.lookup(value)
            if not found:
                return self.invalid
            if type(found) is not str:
                found = _not_subject("the lookup of session_cookie", self.lookup, found)
        # A new Identity each time, nothing remembered per credential: the
        # next request sees what lookup answers then, and a flood of keys
        # costs what one key does.
        if self.kind == C_API_KEY:
            return _new_identity(self.identity_type, "api_key", value, (<tuple>found)[0],
                                 (<tuple>found)[1])
        return _new_identity(self.identity_type, "token" if self.kind == C_TOKEN else "session",
                             found, None, None)


cdef _not_subject(role, lookup, found):
    """A token's or session's lookup must name its subject; an int id is
    taken as its text, anything else (True from a membership test, which
    would put every caller in one bucket; a row) is a mistake."""
    if type(found) is int:
        return str(found)
    raise CallbackError.returned(role, lookup, found,
                                 "the subject (a str, e.g. the user or token id), else None")


cdef class FirstOf:
    """``identify(view)``: the first identity any of ``identifiers`` finds
    (None when none does): what :func:`fastlimit.web.first_of` returns."""

    cdef tuple identifiers

    def __init__(self, identifiers):
        self.identifiers = tuple(identifiers)

    def __call__(self, view):
        return self._first(view)

    @property
    def kinds(self):
        """The identity kinds its identifiers give, when all of them say
        (None: one is a callable of the application's)."""
        found = set()
        for each in self.identifiers:
            kinds = getattr(each, "kinds", None)
            if kinds is None:
                return None
            found |= kinds
        return frozenset(found)

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


# -- the client address -------------------------------------------------------------

cdef enum:
    MAX_V4 = 16     # trusted IPv4 networks checked from C arrays (more: from the tuple)


@cython.final
cdef class ClientAddress:
    """``TrustedProxies.client_ip``, compiled: it runs on every request.

    IPv4 addresses are read and checked against the trusted networks in C,
    with nothing remembered per address (each request may come from a new
    client), and ``X-Forwarded-For`` is read from its right end without
    splitting it; other addresses (IPv6) go to the Python ``trusted_other``
    and ``hop_address``.  ``forwarded_hops`` splits an RFC 7239 header
    (None: the header is ``X-Forwarded-For``)."""

    cdef Header header
    cdef bint unix_peers  # (not "unix": C compilers define it)
    cdef object trusted_other, hop_address, forwarded_hops
    cdef tuple v4       # the trusted IPv4 networks, (address, mask) integers
    cdef int nv4        # how many are in the arrays (-1: too many, use v4)
    cdef uint32_t v4_net[MAX_V4]
    cdef uint32_t v4_mask[MAX_V4]

    def __init__(self, Header header not None, bint unix, tuple v4, trusted_other,
                 hop_address, forwarded_hops):
        self.header = header
        self.unix_peers = unix
        self.v4 = v4
        self.nv4 = len(v4) if len(v4) <= MAX_V4 else -1
        for i, (net, mask) in enumerate(v4[:MAX_V4]):
            self.v4_net[i] = net
            self.v4_mask[i] = mask
        self.trusted_other = trusted_other
        self.hop_address = hop_address
        self.forwarded_hops = forwarded_hops

    def __call__(self, view):
        """The client address of ``view``."""
        return self.find(view)

    cpdef bint trusted(self, str address) except -1:
        """Whether ``address`` is a trusted proxy's."""
        cdef long long n = ipv4(address)
        return self._trusted_v4(<uint32_t>n) if n >= 0 else self.trusted_other(address)

    cdef bint _trusted_v4(self, uint32_t n) except -1:
        cdef int i
        if self.nv4 < 0:
            return any(n & mask == net for net, mask in self.v4)
        for i in range(self.nv4):
            if n & self.v4_mask[i] == self.v4_net[i]:
                return True
        return False

    cdef object find(self, view):
        cdef str text
        cdef Py_ssize_t end, comma
        cdef long long n
        peer = (<ViewFields>view).peer if isinstance(view, ViewFields) else view.peer
        if peer is None:
            if not self.unix_peers:
                return None
        elif not self.trusted(peer):
            return peer
        value = self.header.read(view)
        if not value:
            return peer
        if self.forwarded_hops is not None:
            return self._walk(peer, self.forwarded_hops(value))
        text = value
        client = peer
        end = PyUnicode_GET_LENGTH(text)
        while True:  # the hops from the right, each proxy's before the one it forwarded
            comma = PyUnicode_FindChar(text, 0x2C, 0, end, -1)  # ","
            hop = _stripped(text, comma + 1, end)
            n = ipv4(hop)
            address = hop if n >= 0 else self.hop_address(hop)
            if address is None:
                # "unknown", an obfuscated "_node" or garbage: nothing to key
                # on or trust, so the proxy that reported it is the client.
                break
            client = address
            if not (self._trusted_v4(<uint32_t>n) if n >= 0 else self.trusted_other(address)):
                break
            if comma < 0:
                break
            end = comma
        return client

    cdef object _walk(self, peer, list hops):
        client = peer
        for hop in reversed(hops):
            hop = (<str>hop).strip()
            address = hop if ipv4(hop) >= 0 else self.hop_address(hop)
            if address is None:
                break  # as in find
            client = address
            if not self.trusted(address):
                break
        return client


cdef str _stripped(str text, Py_ssize_t start, Py_ssize_t end):
    """``text[start:end].strip()``, making only the one string."""
    while start < end and Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(text, start)):
        start += 1
    while end > start and Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(text, end - 1)):
        end -= 1
    return PyUnicode_Substring(text, start, end)
