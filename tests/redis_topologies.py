"""Real Redis processes on 127.0.0.1: one server (``RedisServer``), a Redis
Cluster of several primaries (with replicas if asked) and a Sentinel-watched
primary with its replica.

conftest.py makes them fixtures (``redis_server``, ``redis_cluster3``,
``redis_sentinel``...); bench/redis_failover_bench.py starts them without
pytest.  Every process is started on a free port and stopped by its PID.
Waits poll the servers' own state (CLUSTER INFO, INFO replication, SENTINEL
replies) with a deadline: how long a step takes is never assumed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

HOST = "127.0.0.1"
SLOTS = 16384


def free_port() -> int:
    """A loopback port free when asked (another process may take it before
    it is bound: starters try again on a fresh one)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """End ``proc`` by its PID with ``sig`` (SIGKILL if it outlives 10 s)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class RedisServer:
    """One ``redis-server`` process on a free loopback port, in a temp dir.

    ``stop(sig)`` kills it by PID (SIGTERM, SIGKILL...), ``start()`` starts it
    again on the same port (empty: nothing is persisted), ``pause()`` /
    ``resume()`` stop and continue it (a server that hangs)."""

    def __init__(self, binary: str, directory: Path, *extra: str) -> None:
        self.binary = binary
        self.dir = directory
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1,
                             socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:  # wait until it answers PING (or died: port taken)
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode} "
                                       f"on port {self.port}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self, sig: int | None = None) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        _stop(proc, sig or signal.SIGTERM)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, **kw)

    def commands(self, name: str = "evalsha") -> int:
        """How many times the server ran command ``name`` to completion (INFO
        commandstats; an EVALSHA answered NOSCRIPT does not count)."""
        with self.client() as c:
            stats = c.info("commandstats").get(f"cmdstat_{name}", {})
        return int(stats.get("calls", 0) - stats.get("failed_calls", 0))


def start_server(binary: str, directory: Callable[[], Path], *extra: str) -> RedisServer:
    """A started RedisServer in a fresh ``directory()``, tried on up to three
    free ports (one may be taken between its probe and the bind)."""
    last: RuntimeError | None = None
    for _ in range(3):
        server = RedisServer(binary, directory(), *extra)
        try:
            return server.start()
        except RuntimeError as e:
            last = e
    assert last is not None
    raise last


def wait_for(what: str, ready: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``ready()``'s first true value, polled until ``timeout`` (then an error
    naming ``what``).  Connection errors count as not ready yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = ready()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.02)


# -- Redis Cluster -------------------------------------------------------------------------


class Cluster:
    """``len(nodes)`` primaries sharing the 16384 slots; ``replicas[i]``
    (if any were asked for) are the replicas of ``nodes[i]``.

    ``url`` is the ``redis+cluster://`` URL naming every primary;
    ``node_url(i)`` the plain ``redis://`` URL of one (which fastlimit follows
    as a cluster seed)."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        self.replicas: list[list[Any]] = [[] for _ in nodes]
        self.how = ""  # redis-cli --cluster create, or CLUSTER ADDSLOTSRANGE + MEET
        self._owners: list[tuple[int, int, int]] = []  # (first slot, last slot, node)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def node_url(self, i: int, db: int = 0) -> str:
        return f"redis://{HOST}:{self.nodes[i].port}/{db}"

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host=HOST, port=self.nodes[0].port)

    def primary_of(self, key: bytes | str) -> int:
        """The index of the node serving ``key``'s slot (as the cluster
        said when first asked: tests do not move slots)."""
        if not self._owners:
            with self.nodes[0].client() as c:
                for first, last, (_, port, *_) in (
                        (r[0], r[1], r[2]) for r in c.execute_command("CLUSTER", "SLOTS")):
                    i = next(i for i, n in enumerate(self.nodes) if n.port == int(port))
                    self._owners.append((int(first), int(last), i))
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return next(i for first, last, i in self._owners if first <= slot <= last)

    def stop(self) -> None:
        for n in [*self.nodes, *(r for rs in self.replicas for r in rs)]:
            if n.proc is not None:
                n.resume()  # a paused server cannot act on SIGTERM
            n.stop()


def _cluster_node(start_server: Callable[..., Any], free_port: Callable[[], int],
                  node_timeout_ms: int, extra: tuple[str, ...]) -> Any:
    for attempt in range(5):
        # the bus port is set too: port + 10000 may be taken or past 65535.
        # It is probed before the server's own port is, so the two can be
        # the same free port (or another's, taken meanwhile): the server
        # then exits at once, and a fresh pair is tried.
        try:
            return start_server(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", str(node_timeout_ms),
                # a replica's full sync waits this long for more replicas (5 s)
                "--repl-diskless-sync-delay", "0", *extra)
        except RuntimeError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def start_cluster(start_server: Callable[..., Any], free_port: Callable[[], int],
                  primaries: int = 3, node_timeout_ms: int = 15000,
                  replicas: int = 0, extra: tuple[str, ...] = ()) -> Cluster:
    """A cluster of ``primaries`` redis-server processes made one cluster by
    ``redis-cli --cluster create`` (or, without redis-cli, by assigning the
    slots and CLUSTER MEET), once every node says ``cluster_state:ok`` and
    knows every primary; then ``replicas`` replicas of each primary (CLUSTER
    MEET + CLUSTER REPLICATE), once each is in sync and known to every node.
    ``node_timeout_ms``: how long a stopped node goes unnoticed; after it, a
    replica of a dead primary takes its slots over, or with none the cluster
    refuses every slot (cluster-require-full-coverage).  ``extra``: more
    redis-server arguments for every node."""
    nodes: list[Any] = []
    cluster = Cluster(nodes)
    try:
        for _ in range(primaries):
            nodes.append(_cluster_node(start_server, free_port, node_timeout_ms, extra))
        cli = shutil.which("redis-cli")
        made = False
        if cli is not None:
            done = subprocess.run(
                [cli, "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=60)
            made = done.returncode == 0
            cluster.how = "redis-cli --cluster create"
        if not made:
            _assign_and_meet(nodes)
            cluster.how = "CLUSTER ADDSLOTSRANGE + CLUSTER MEET"
        for n in nodes:
            with n.client(socket_timeout=2) as c:
                wait_for(f"cluster node {n.port}", lambda c=c: _joined(c, primaries))
        if replicas:
            _add_replicas(cluster, start_server, free_port, node_timeout_ms, replicas, extra)
        return cluster
    except BaseException:
        cluster.stop()
        raise


def _add_replicas(cluster: Cluster, start_server: Callable[..., Any],
                  free_port: Callable[[], int], node_timeout_ms: int, replicas: int,
                  extra: tuple[str, ...]) -> None:
    cluster.replicas = [[] for _ in cluster.nodes]
    for i, primary in enumerate(cluster.nodes):
        with primary.client() as c:
            primary_id = c.execute_command("CLUSTER", "MYID")
        for _ in range(replicas):
            replica = _cluster_node(start_server, free_port, node_timeout_ms, extra)
            cluster.replicas[i].append(replica)
            with primary.client() as c, replica.client() as r:
                bus = r.config_get("cluster-port")["cluster-port"]
                c.execute_command("CLUSTER", "MEET", HOST, replica.port, bus)
            with replica.client(socket_timeout=2) as c:
                # REPLICATE needs the primary known to the replica first
                wait_for(f"replica {replica.port} meets",
                         lambda c=c, to=primary_id: c.execute_command("CLUSTER", "REPLICATE", to))
                wait_for(f"replica {replica.port} in sync", lambda c=c: _linked(c))
    every = [*cluster.nodes, *(r for rs in cluster.replicas for r in rs)]
    for n in every:
        with n.client(socket_timeout=2) as c:
            wait_for(f"cluster node {n.port} knows the replicas",
                     lambda c=c: _joined(c, len(cluster.nodes), len(every) - len(cluster.nodes)))


def _assign_and_meet(nodes: list[Any]) -> None:
    share = SLOTS // len(nodes)
    for i, n in enumerate(nodes):
        last = SLOTS - 1 if i == len(nodes) - 1 else (i + 1) * share - 1
        with n.client() as c:
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
    with nodes[0].client() as c:
        for n in nodes[1:]:
            with n.client() as other:
                bus = other.config_get("cluster-port")["cluster-port"]
            c.execute_command("CLUSTER", "MEET", HOST, n.port, bus)


def _joined(client: redis.Redis, primaries: int, replicas: int = 0) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    if "cluster_state:ok" not in text:
        return False
    nodes = client.execute_command("CLUSTER", "NODES")
    lines = (nodes.decode() if isinstance(nodes, bytes) else str(nodes)).splitlines()
    # <id> <ip:port@bus> <flags> ...: one line per node this one knows
    flags = [line.split()[2].split(",") for line in lines]
    return (sum("master" in f for f in flags) == primaries
            and sum("slave" in f for f in flags) == replicas)


# -- Sentinel ----------------------------------------------------------------------------


class SentinelSetup:
    """A primary, its replica and ``len(sentinel_ports)`` sentinels watching
    them as ``service``.  ``failover()`` forces a switch (SENTINEL FAILOVER)
    and returns once the topology is whole again with the roles swapped."""

    def __init__(self, servers: list[Any], sentinels: list[subprocess.Popen[bytes]],
                 sentinel_ports: list[int], service: str) -> None:
        self.servers = servers
        self.sentinels = sentinels
        self.sentinel_ports = sentinel_ports
        self.service = service

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def sentinel(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.sentinel_ports[0], socket_timeout=2)

    def master_port(self) -> int:
        with self.sentinel() as s:
            addr = s.sentinel_get_master_addr_by_name(self.service)
        return int(addr[1])

    def master(self) -> Any:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> Any:
        port = self.master_port()
        return next(s for s in self.servers if s.port != port)

    def replica_url(self) -> str:
        return f"redis://{HOST}:{self.replica().port}/0"

    def failover(self, demote_old: bool = True) -> tuple[int, int]:
        """Force a failover; returns (old master port, new master port).

        With ``demote_old`` the old master is made the new one's replica as
        soon as every sentinel has ended the failover (SENTINEL MASTERS names
        the new master), which is what they do themselves some 8-20 s later
        (they wait before reconfiguring an instance that still says it is a
        master); until then clients still connected to it write there, and
        those writes are lost."""
        # the sentinels see a demoted master as a replica at their next INFO
        # to it (every 10 s): waited for here, by a second failover only
        self.wait_replica_known()
        old = self.master()
        new = self.replica()
        with old.client() as c:
            c.execute_command("WAIT", 1, 5000)  # the replica has every write
        with self.sentinel() as s:
            s.execute_command("SENTINEL", "FAILOVER", self.service)
        for port in self.sentinel_ports:  # every sentinel: a client may ask any
            with redis.Redis(host=HOST, port=port, socket_timeout=2) as s:
                wait_for("the sentinels' switch", lambda s=s: self._switched(s, new.port))
        with new.client() as c:
            wait_for("the promoted replica", lambda: c.info("replication")["role"] == "master")
        if demote_old:
            with old.client() as c:
                c.execute_command("REPLICAOF", HOST, new.port)
        with old.client() as c:
            wait_for("the old master as replica", lambda: _linked(c))
        return old.port, new.port

    def _switched(self, sentinel: redis.Redis, port: int) -> bool:
        # SENTINEL MASTERS, as redis-py's discovery reads it: it names the new
        # master only once the failover is over (+switch-master), while
        # get-master-addr-by-name names it from the promotion on
        state = sentinel.sentinel_masters().get(self.service, {})
        return bool(int(state.get("port", 0)) == port
                    and "failover_in_progress" not in str(state.get("flags", "")))

    def wait_replica_known(self) -> None:
        """Until every sentinel lists the current replica as healthy (a
        failover needs one)."""
        port = self.replica().port
        for p in self.sentinel_ports:
            with redis.Redis(host=HOST, port=p, socket_timeout=2) as s:
                wait_for("the sentinels' view of the replica",
                         lambda s=s: any(int(r["port"]) == port
                                         and r.get("master-link-status") == "ok"
                                         and "s_down" not in str(r.get("flags", ""))
                                         for r in s.sentinel_slaves(self.service)))

    def stop(self) -> None:
        for proc in self.sentinels:
            _stop(proc)
        for server in self.servers:
            if server.proc is not None:
                server.resume()
            server.stop()


def _linked(client: redis.Redis) -> bool:
    info = client.info("replication")
    return bool(info["role"] == "slave" and info.get("master_link_status") == "up")


def start_sentinel(start_server: Callable[..., Any], free_port: Callable[[], int],
                   binary: str, directory: Path, sentinels: int = 1,
                   service: str = "fastlimit-svc") -> SentinelSetup:
    """A primary, a replica in sync with it, then ``sentinels`` sentinels
    (quorum 1: SENTINEL FAILOVER needs no agreement), once each knows the
    master and lists the replica.  ``failover()`` returns when every
    sentinel has ended the failover (about 1.3 s here, with one sentinel or
    three); a second one first waits until they list the demoted master as
    a healthy replica, which they learn at their next INFO to it (every
    10 s: some 11 s here)."""
    started: list[Any] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # a full sync waits repl-diskless-sync-delay (5 s) for more replicas
        quick = ("--repl-diskless-sync-delay", "0")
        primary = start_server(*quick)
        started.append(primary)
        replica = start_server(*quick, "--replicaof", HOST, str(primary.port))
        started.append(replica)
        with replica.client() as c:
            wait_for("the replica's sync", lambda: _linked(c))
        ports = []
        for i in range(sentinels):
            port = free_port()
            procs.append(sentinel_process(binary, directory / f"sentinel-{i}.conf",
                                          f"port {port}", service, primary.port))
            ports.append(port)
        setup = SentinelSetup([primary, replica], procs, ports, service)
        for port, proc in zip(ports, procs, strict=True):
            def knows(port: int = port, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-sentinel exited with {proc.returncode}")
                with redis.Redis(host=HOST, port=port, socket_timeout=2) as s:
                    return bool(s.sentinel_get_master_addr_by_name(service))
            wait_for(f"sentinel {port}", knows)
        setup.wait_replica_known()
        return setup
    except BaseException:
        for proc in procs:
            _stop(proc)
        for server in started:
            server.stop()
        raise


def sentinel_process(binary: str, conf: Path, listen: str, service: str, master_port: int,
                     extra: str = "") -> subprocess.Popen[bytes]:
    """A started sentinel (quorum 1) watching the master on ``master_port``
    as ``service``; ``listen``: its port lines (``port N``, or ``port 0`` and
    ``tls-port N``), ``extra``: more configuration."""
    conf.write_text(
        f"{listen}\nbind {HOST}\ndir {conf.parent}\n{extra}"
        f"sentinel monitor {service} {HOST} {master_port} 1\n"
        f"sentinel down-after-milliseconds {service} 2000\n"
        f"sentinel failover-timeout {service} 10000\n")
    return subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


# -- TLS ----------------------------------------------------------------------------------


def make_certificate(directory: Path) -> Path | None:
    """A self-signed certificate and its key for 127.0.0.1 (``cert.pem``,
    ``key.pem``; the certificate is its own CA), or None without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"),
         "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"],
        capture_output=True, timeout=60)
    return directory / "cert.pem" if done.returncode == 0 else None


def tls_config(cert: Path, port: int) -> list[tuple[str, str]]:
    """A server's TLS settings: ``port`` for TLS clients, ``cert`` (and its
    key beside it) as its certificate and CA, client certificates not asked
    for."""
    return [("tls-port", str(port)), ("tls-cert-file", str(cert)),
            ("tls-key-file", str(cert.parent / "key.pem")), ("tls-ca-cert-file", str(cert)),
            ("tls-auth-clients", "no")]
