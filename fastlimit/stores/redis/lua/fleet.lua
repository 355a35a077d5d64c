-- fastlimit fleet mode: a host's lease of a key's global GCRA budget, in one
-- atomic call (fastlimit/stores/fleet.py sends it, after lib.lua: the time
-- pairs and the stored tat are the other scripts').
--
-- The key is the limiter's ordinary Redis key (RedisBackend's
-- <prefix>:<name>:{<key>}), holding its tat as decimal nanoseconds: hosts
-- that lease and hosts (or cold keys) that check one hit at a time share
-- one bucket.  Taking n units is the same state change as n hits of cost 1
-- at `now`, so every unit a host serves was counted by the global GCRA
-- before it was served: the fleet never admits more than one GCRA would.
--
-- Giving back r units is the GCRA's refund (tat -= r x T, never below now),
-- which keeps the invariant max(tat, now) >= t0 + N x T (N: units paid net
-- of returns since t0), hence N <= B + (now - t0) / T at every take.
--
-- Times are (s, ns) pairs, as in gcra.lua: Lua numbers are doubles, exact
-- only to 2^53, and nanosecond times are larger.
--
-- KEYS[1]: the key.
-- ARGV: now_s, now_ns ('' '' = the server's TIME), T_s, T_ns, tau_s, tau_ns,
--       give (units returned first), want (units to take, at most).
-- Reply: 'granted ahead_s ahead_ns': units taken (0..want), then
--        max(0, tat - now) after the call (the host's view of the bucket).

local key = KEYS[1]
local now_s, now_ns = now_pair(ARGV[1], ARGV[2])
local T_s, T_ns = tonumber(ARGV[3]), tonumber(ARGV[4])
local tau_s, tau_ns = tonumber(ARGV[5]), tonumber(ARGV[6])
local give, want = tonumber(ARGV[7]), tonumber(ARGV[8])

local function mul(k, s, ns)
    -- k x (s, ns) for k x ns < 2^53 (k <= the burst, ns < 1e9): exact, the
    -- quotient by 1e9 corrected rather than trusted
    local p = k * ns
    local q = math.floor(p / E9)
    local r = p - q * E9
    if r < 0 then
        q, r = q - 1, r + E9
    elseif r >= E9 then
        q, r = q + 1, r - E9
    end
    return k * s + q, r
end

local a_s, a_ns = 0, 0  -- ahead = max(0, tat - now)
local tat_s, tat_ns = parse(redis.call('GET', key))
if tat_s ~= nil and not le(tat_s, tat_ns, now_s, now_ns) then
    a_s, a_ns = sub(tat_s, tat_ns, now_s, now_ns)
end

if give > 0 then
    local g_s, g_ns = mul(give, T_s, T_ns)
    if le(a_s, a_ns, g_s, g_ns) then
        a_s, a_ns = 0, 0
    else
        a_s, a_ns = sub(a_s, a_ns, g_s, g_ns)
    end
end

-- the most units that fit: ahead + k x T <= tau.  A double's estimate,
-- then exact steps (the estimate is off by a unit at most).
local function fits(k)
    local k_s, k_ns = mul(k, T_s, T_ns)
    local n_s, n_ns = add(a_s, a_ns, k_s, k_ns)
    return le(n_s, n_ns, tau_s, tau_ns)
end

local granted = 0
if want > 0 then
    if fits(want) then
        granted = want
    elseif fits(1) then
        local free = (tau_s - a_s) * E9 + (tau_ns - a_ns)
        local k = math.floor(free / (T_s * E9 + T_ns))
        if k >= want then
            k = want - 1
        end
        if k < 1 then
            k = 1
        end
        while k > 1 and not fits(k) do
            k = k - 1
        end
        while k + 1 < want and fits(k + 1) do
            k = k + 1
        end
        granted = k
    end
    if granted > 0 then
        local k_s, k_ns = mul(granted, T_s, T_ns)
        a_s, a_ns = add(a_s, a_ns, k_s, k_ns)
    end
end

if give > 0 or granted > 0 then
    if a_s == 0 and a_ns == 0 then
        redis.call('DEL', key)
    else
        gcra_store(key, now_s, now_ns, a_s, a_ns)  -- kept until fully replenished
    end
end

return string.format('%d %d %d', granted, a_s, a_ns)
