-- fastlimit: one request under a policy, atomically and in one round trip:
-- its concurrency leases, then its rates and quotas, all or nothing.  The
-- decisions are those of the policy's decision path on a shared table
-- (fastlimit/policy/_plan.pyx: Plan.decide, and the counting loop of
-- fastlimit/limiters/_counting.pyx), which tests/test_redis_request.py
-- compares it with.  It runs after lib.lua.
--
-- KEYS: the leases' keys (L), then the hits' keys (H), in the request's order.
-- ARGV[1], ARGV[2]: now as (s, ns); ARGV[1] == '' means the server's TIME
--          (leases count in its ms).
-- ARGV[3]: L.  ARGV[4]: H.
-- Then per lease three values: token, ttl_ms, limit.
-- Then per hit six values: kind ('r' rate, 'q' quota), flags (shadow x 2 +
-- consume), and for a rate inc_s, inc_ns, tau_s, tau_ns; for a quota tag,
-- cost, limit, keep_ms (quota.lua's arguments).
--
-- What it does, as the decision path does:
--   1. Each lease needs room; the first without denies the request
--      ("concurrency"): the hits are then only peeked.
--   2. The hits in order; the first enforced one that denies denies the
--      request ("rate" / "quota"): the hits after it are peeked, against
--      the state as stored (what the decision path reads once it has given
--      back the hits before).  A shadow hit that denies never denies the
--      request.
--   3. Only when nothing denied is anything written: every allowed hit that
--      consumes (shadows too) and every lease.  A denied request leaves
--      only its expired leases dropped.
--
-- Reply: one string of integers: the 1-based index of the lease that had
-- no room (0: none), the expired leases dropped per lease, then three per
-- hit: allowed (1/0) and, for a rate, ahead = max(0, tat - now) before the
-- check as (s, ns); for a quota the period's count before it and 0.

local now_s, now_ns = now_pair(ARGV[1], ARGV[2])
local now_ms = now_s * 1000 + math.floor(now_ns / 1000000)
local L = tonumber(ARGV[3])
local H = tonumber(ARGV[4])
local out = {0}

local full = 0
for i = 1, L do
    local j = 5 + 3 * (i - 1)
    local room, dropped = lease_room(KEYS[i], now_ms, tonumber(ARGV[j + 2]))
    out[1 + i] = dropped
    -- The token already there is this request's own: a call that timed out
    -- after it ran, sent again (random 62-bit tokens do not meet by chance).
    -- It holds its lease: room, and the write below only renews it.
    if redis.call('ZSCORE', KEYS[i], ARGV[j]) then
        room = true
    end
    if not room and full == 0 then
        full = i
    end
end
out[1] = full

local writes = {}  -- what a passing request stores, in order
local pending = {}  -- key -> the state a write of this request left in it
local denied = full ~= 0
local base = 5 + 3 * L
for i = 1, H do
    local key = KEYS[L + i]
    local j = base + 6 * (i - 1)
    local kind = ARGV[j]
    local flags = tonumber(ARGV[j + 1])
    local shadow = flags >= 2
    local consume = flags % 2 == 1 and not denied
    local p = not denied and pending[key] or nil
    local ok, x, y
    if kind == 'r' then
        local inc_s, inc_ns = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
        local tat_s, tat_ns
        if p then
            tat_s, tat_ns = add(now_s, now_ns, p[1], p[2])
        else
            tat_s, tat_ns = parse(redis.call('GET', key))
        end
        local n_s, n_ns
        ok, x, y, n_s, n_ns = gcra_check(tat_s, tat_ns, now_s, now_ns, inc_s, inc_ns,
                                         tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5]))
        if ok and consume then
            pending[key] = {n_s, n_ns}
            writes[#writes + 1] = {'r', key, n_s, n_ns}
        end
    else
        local tag, count, keep_ms
        if p then
            tag, count, keep_ms = p[1], p[2], p[3]
        else
            tag, count, keep_ms = quota_read(key, tonumber(ARGV[j + 2]), ARGV[j + 5])
        end
        local cost = tonumber(ARGV[j + 3])
        ok, x, y = count + cost <= tonumber(ARGV[j + 4]), count, 0
        if ok and consume and cost > 0 then
            pending[key] = {tag, count + cost, keep_ms}
            writes[#writes + 1] = {'q', key, tag, count + cost, keep_ms}
        end
    end
    if not ok and not shadow then
        denied = true
    end
    out[#out + 1] = ok and 1 or 0
    out[#out + 1] = x
    out[#out + 1] = y
end

if not denied then
    -- a later write of a key holds its earlier ones' counts too
    for _, w in ipairs(writes) do
        if pending[w[2]] then
            local q = pending[w[2]]
            pending[w[2]] = nil
            if w[1] == 'r' then
                gcra_store(w[2], now_s, now_ns, q[1], q[2])
            else
                quota_write(w[2], q[1], q[2], q[3])
            end
        end
    end
    for i = 1, L do
        local j = 5 + 3 * (i - 1)
        redis.call('ZADD', KEYS[i], ms(now_ms + tonumber(ARGV[j + 1])), ARGV[j])
        lease_keep(KEYS[i], now_ms)
    end
end
-- numbers print as %.14g: exact, as every one is below 1e10
return table.concat(out, ' ')
