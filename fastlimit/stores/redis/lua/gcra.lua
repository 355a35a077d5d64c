-- fastlimit: GCRA over Redis keys, atomically (a script runs alone).
-- The decisions are those of fastlimit/_core.pyx; fastlimit/backends/redis.py
-- turns the replies into Decisions with Python integers.
--
-- It runs after lib.lua (times as (s, ns) pairs: see there).
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

local mode = ARGV[1]
if mode == 'reset' then
    return tostring(redis.call('DEL', unpack(KEYS)))
end
local now_s, now_ns = now_pair(ARGV[2], ARGV[3])

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
                local a_s, a_ns = sub(t_s, t_ns, now_s, now_ns)  -- as gcra_store takes it
                gcra_store(key, now_s, now_ns, a_s, a_ns)
            end
            out[i] = 1
        end
    end
    return table.concat(out, ' ')
end

local all = mode == 'all'
local pending = {}  -- 'all' mode: key -> {ahead + inc as (s, ns)}
local denied = false
for i = 1, #KEYS do
    local key = KEYS[i]
    local inc_s, inc_ns, tau_s, tau_ns, consume = params(i)
    local tat_s, tat_ns
    local p = pending[key]
    if p then
        tat_s, tat_ns = add(now_s, now_ns, p[1], p[2])
    else
        tat_s, tat_ns = parse(redis.call('GET', key))
    end
    local ok, a_s, a_ns, n_s, n_ns = gcra_check(tat_s, tat_ns, now_s, now_ns, inc_s, inc_ns,
                                                tau_s, tau_ns)
    if ok and consume then
        if all then
            pending[key] = {n_s, n_ns}
        else
            gcra_store(key, now_s, now_ns, n_s, n_ns)
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
        gcra_store(key, now_s, now_ns, q[1], q[2])
    end
end
-- numbers print as %.14g: exact, as every one is below 1e10
return table.concat(out, ' ')
