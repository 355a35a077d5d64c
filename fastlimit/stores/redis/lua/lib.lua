-- fastlimit: what the scripts share.  The backend sends each script as
-- this file followed by the script's own (common.py: SCRIPTS), so the
-- arithmetic of a GCRA check, a quota count and a lease exists once, for
-- the one-limit scripts (gcra, quota, leases) and the one-request script
-- (request) alike.
--
-- Time.  A tat is an integer nanosecond time, stored as its decimal string
-- (the same number the shared table would hold).  Lua 5.1 numbers are
-- doubles, exact only up to 2^53, and epoch nanoseconds (~1.8e18) are far
-- above that, so the scripts never hold a time in one number: every time
-- and every duration is a pair (s, ns), whole seconds and 0 <= ns < 1e9.
-- Both parts of any int64 time stay below 2^34, sums and differences below
-- 2^35: the arithmetic is exact for every time and duration in [0, 2^63) ns.

if redis.replicate_commands then
    -- Redis 3.2-4.x replicate scripts verbatim unless told: TIME must not
    -- be replayed on replicas.  Always true (and a no-op) from 5.0.
    redis.replicate_commands()
end

local E9 = 1000000000

local function now_pair(s, ns)
    -- the time a call names, or the server's TIME when it names none ('')
    if s == '' then
        local t = redis.call('TIME')
        return tonumber(t[1]), tonumber(t[2]) * 1000
    end
    return tonumber(s), tonumber(ns)
end

local function parse(v)
    -- a stored tat: decimal nanoseconds -> s, ns (nil, nil when absent)
    if not v then
        return nil, nil
    end
    local n = #v
    if n <= 9 then
        return 0, tonumber(v)
    end
    return tonumber(string.sub(v, 1, n - 9)), tonumber(string.sub(v, n - 8))
end

local function format(s, ns)
    if s == 0 then
        return string.format('%d', ns)
    end
    return string.format('%d%09d', s, ns)
end

local function le(as, ans, bs, bns)
    return as < bs or (as == bs and ans <= bns)
end

local function add(as, ans, bs, bns)
    local s, ns = as + bs, ans + bns
    if ns >= E9 then
        return s + 1, ns - E9
    end
    return s, ns
end

local function sub(as, ans, bs, bns)  -- needs a >= b
    local s, ns = as - bs, ans - bns
    if ns < 0 then
        return s - 1, ns + E9
    end
    return s, ns
end

local function ms_ceil(s, ns)
    -- ns < 1e9, so ns / 1e6 lands on an integer only when it is one
    local ms = s * 1000 + math.floor(ns / 1000000)
    if ns % 1000000 ~= 0 then
        ms = ms + 1
    end
    return ms
end

-- GCRA ------------------------------------------------------------------------

local function gcra_check(tat_s, tat_ns, now_s, now_ns, inc_s, inc_ns, tau_s, tau_ns)
    -- ok, then ahead = max(0, tat - now) before the check, and
    -- new_tat - now = max(tat, now) + inc - now = ahead + inc
    local a_s, a_ns = 0, 0
    if tat_s ~= nil and not le(tat_s, tat_ns, now_s, now_ns) then
        a_s, a_ns = sub(tat_s, tat_ns, now_s, now_ns)
    end
    local n_s, n_ns = add(a_s, a_ns, inc_s, inc_ns)
    return le(n_s, n_ns, tau_s, tau_ns), a_s, a_ns, n_s, n_ns
end

local function gcra_store(key, now_s, now_ns, n_s, n_ns)
    -- tat = now + (ahead + inc), kept until fully replenished: a missing key
    -- and a key with tat <= now are the same, fresh.  PX counts on the
    -- server's clock, even when `now` is passed.
    local t_s, t_ns = add(now_s, now_ns, n_s, n_ns)
    redis.call('SET', key, format(t_s, t_ns), 'PX', ms_ceil(n_s, n_ns))
end

-- Calendar quotas ---------------------------------------------------------------

local function quota_read(key, tag, keep_ms)
    -- the key's (tag, count, keep_ms) for the client's period ``tag``.  A
    -- value is '<tag> <count>'; an absent key, or one of an older period,
    -- counts 0 (a new period starts at zero on its first use, no sweeper).
    -- A stored period newer than the client's wins: near a boundary, a host
    -- whose clock lags counts in the newest period any host has started,
    -- and keeps that period's (later) expiry.
    local v = redis.call('GET', key)
    if v then
        local sp = string.find(v, ' ', 1, true)
        local stored = tonumber(string.sub(v, 1, sp - 1))
        if stored >= tag then
            if stored > tag then
                tag = stored
                keep_ms = math.max(redis.call('PTTL', key), 1)
            end
            return tag, tonumber(string.sub(v, sp + 1)), keep_ms
        end
    end
    return tag, 0, keep_ms
end

local function quota_write(key, tag, count, keep_ms)
    if count == 0 then
        redis.call('DEL', key)  -- the same as a count of 0, in no memory
    else
        redis.call('SET', key, string.format('%d %d', tag, count), 'PX', keep_ms)
    end
end

-- Concurrency leases --------------------------------------------------------------

local function ms(x)
    return string.format('%d', x)
end

local function lease_now(s)
    -- now in ms: the call's, or the server's TIME ('')
    if s == '' then
        local t = redis.call('TIME')
        return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    return tonumber(s)
end

local function lease_room(key, now, limit)
    -- whether the key has room for one more lease, and the expired ones dropped
    local dropped = redis.call('ZREMRANGEBYSCORE', key, '-inf', ms(now))
    return redis.call('ZCARD', key) < limit, dropped
end

local function lease_keep(key, now)
    -- the set lives as long as its latest lease
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] then
        redis.call('PEXPIRE', key, ms(math.max(tonumber(last[2]) - now, 1)))
    end
end

local function lease_add(key, now, ttl, token)
    -- NX: a token already present (two random 62-bit tokens alike) is a
    -- denial, never two holders sharing one lease
    if redis.call('ZADD', key, 'NX', ms(now + ttl), token) == 0 then
        return false
    end
    lease_keep(key, now)
    return true
end

