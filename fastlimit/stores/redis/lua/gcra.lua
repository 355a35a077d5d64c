-- fastlimit: GCRA over Redis keys, atomically (a script runs alone).
-- The decisions are those of fastlimit/_core.pyx; fastlimit/backends/redis.py
-- turns the replies into Decisions with Python integers.
--
-- Time.  A tat is an integer nanosecond time, stored as its decimal string
-- (the same number the shared table would hold).  Lua 5.1 numbers are
-- doubles, exact only up to 2^53, and epoch nanoseconds (~1.8e18) are far
-- above that, so the script never holds a time in one number: every time and
-- every duration is a pair (s, ns), whole seconds and 0 <= ns < 1e9.  Both
-- parts of any int64 time stay below 2^34, sums and differences below 2^35:
-- the arithmetic is exact for every time and duration in [0, 2^63) ns.
--
-- KEYS: the keys, one per check (a key may repeat: checks run in order).
-- ARGV[1]: 'hit' (each check on its own, in order), 'all' (count every check
--          or none), 'refund', or 'reset' (forget the keys; no more ARGV).
-- ARGV[2], ARGV[3]: now as (s, ns); ARGV[2] == '' means the server's TIME.
-- ARGV[4]: P, the number of parameter groups that follow: 1 (shared by all
--          checks) or #KEYS (one per check).  A group is five values:
--          inc_s, inc_ns (cost x emission interval), tau_s, tau_ns
--          (tolerance), consume ('1' counts an allowed hit, '0' peeks).
--
-- Reply: one string of integers separated by spaces (a RESP array costs a
-- pure-Python client more to parse than the rest of the check).  'hit' and
-- 'all': three per check: allowed (1/0), then ahead_s, ahead_ns =
-- max(0, tat - now) before the check.  The client derives remaining,
-- reset_after and retry_after from these.  In 'all' mode the allowed flags
-- say which checks would pass; the hits are stored only if every one does.
-- 'refund': 1 per key that had state, else 0.  'reset': keys deleted.
--
-- Expiry: a key is written with PX = ceil((tat - now) / 1 ms), so it goes
-- when fully replenished (a missing key and a key with tat <= now are the
-- same: fresh).  PX counts on the server's clock, even when `now` is passed.

if redis.replicate_commands then
    -- Redis 3.2-4.x replicate scripts verbatim unless told: TIME must not
    -- be replayed on replicas.  Always true (and a no-op) from 5.0.
    redis.replicate_commands()
end

local E9 = 1000000000
local mode = ARGV[1]
if mode == 'reset' then
    return tostring(redis.call('DEL', unpack(KEYS)))
end
local now_s, now_ns
if ARGV[2] == '' then
    local t = redis.call('TIME')
    now_s = tonumber(t[1])
    now_ns = tonumber(t[2]) * 1000
else
    now_s = tonumber(ARGV[2])
    now_ns = tonumber(ARGV[3])
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

local function store(key, tat_s, tat_ns, ahead_s, ahead_ns)
    redis.call('SET', key, format(tat_s, tat_ns), 'PX', ms_ceil(ahead_s, ahead_ns))
end

local P = tonumber(ARGV[4])
local out = {}

local function params(i)
    local j = 5
    if P ~= 1 then
        j = 5 + 5 * (i - 1)
    end
    return tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]),
        tonumber(ARGV[j + 3]), ARGV[j + 4] == '1'
end

if mode == 'refund' then
    -- tat -= cost x T; a tat that falls to now or below is fresh: drop it
    for i = 1, #KEYS do
        local key = KEYS[i]
        local inc_s, inc_ns = params(i)
        local tat_s, tat_ns = parse(redis.call('GET', key))
        if tat_s == nil then
            out[i] = 0
        else
            local lim_s, lim_ns = add(now_s, now_ns, inc_s, inc_ns)
            if le(tat_s, tat_ns, lim_s, lim_ns) then
                redis.call('DEL', key)
            else
                local t_s, t_ns = sub(tat_s, tat_ns, inc_s, inc_ns)
                local a_s, a_ns = sub(t_s, t_ns, now_s, now_ns)
                store(key, t_s, t_ns, a_s, a_ns)
            end
            out[i] = 1
        end
    end
    return table.concat(out, ' ')
end

local all = mode == 'all'
local pending = {}  -- 'all' mode: key -> {tat_s, tat_ns, ahead_s, ahead_ns}
local denied = false
for i = 1, #KEYS do
    local key = KEYS[i]
    local inc_s, inc_ns, tau_s, tau_ns, consume = params(i)
    local tat_s, tat_ns
    local p = pending[key]
    if p then
        tat_s, tat_ns = p[1], p[2]
    else
        tat_s, tat_ns = parse(redis.call('GET', key))
    end
    -- ahead = max(0, tat - now): how far the key's tat is in the future
    local a_s, a_ns = 0, 0
    if tat_s ~= nil and not le(tat_s, tat_ns, now_s, now_ns) then
        a_s, a_ns = sub(tat_s, tat_ns, now_s, now_ns)
    end
    -- new_tat - now = max(tat, now) + inc - now = ahead + inc
    local n_s, n_ns = add(a_s, a_ns, inc_s, inc_ns)
    local ok = le(n_s, n_ns, tau_s, tau_ns)
    if ok and consume then
        local t_s, t_ns = add(now_s, now_ns, n_s, n_ns)
        if all then
            pending[key] = {t_s, t_ns, n_s, n_ns}
        else
            store(key, t_s, t_ns, n_s, n_ns)
        end
    elseif not ok then
        denied = true
    end
    out[3 * i - 2] = ok and 1 or 0
    out[3 * i - 1] = a_s
    out[3 * i] = a_ns
end
if all and not denied then
    for key, q in pairs(pending) do
        store(key, q[1], q[2], q[3], q[4])
    end
end
-- numbers print as %.14g: exact, as every one is below 1e10
return table.concat(out, ' ')
