-- fastlimit: one calendar-quota step on one key, atomically (a script runs
-- alone).  The decisions are QuotaCounter.step's (fastlimit/_core.pyx); which
-- period it is, the client computes (fastlimit/quota.py, its wall clock).
--
-- KEYS[1]: the quota's key for one user key.  Its value is '<tag> <count>':
--          the period it counts in (an integer that grows with time) and the
--          count.  An absent key, or one of an older period, counts 0: a new
--          period starts at zero on its first use, with no sweeper.
-- ARGV[1]: mode: '0' peek, '1' consume, '2' refund.
-- ARGV[2]: tag, the client's current period.
-- ARGV[3]: cost.
-- ARGV[4]: limit.
-- ARGV[5]: how long to keep the key after a write, in ms: the time to the
--          period's end on the client's clock plus a grace, so the count
--          outlives its period on every host whose clock lags by less.
--
-- Reply: '<result> <count>': result 1 allowed (a refund always is), 0
-- denied; count is the period's count after the step.  Every number here is
-- an integer below 2^41: exact in a double.
--
-- A stored period newer than the client's wins.  Near a boundary, a host
-- whose clock lags counts in the newest period any host has started: a key
-- never moves back to an older period, so no count is reset twice.

local key = KEYS[1]
local mode = ARGV[1]
local tag = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local keep_ms = ARGV[5]

local count = 0
local v = redis.call('GET', key)
if v then
    local sp = string.find(v, ' ', 1, true)
    local stored = tonumber(string.sub(v, 1, sp - 1))
    if stored >= tag then
        if stored > tag then
            -- a newer period, started by a host ahead of us: it has its own
            -- (later) expiry, which our shorter one must not replace
            tag = stored
            keep_ms = math.max(redis.call('PTTL', key), 1)
        end
        count = tonumber(string.sub(v, sp + 1))
    end
end

local new
if mode == '2' then
    new = count - cost
    if new < 0 then
        new = 0
    end
elseif count + cost > limit then
    return '0 ' .. string.format('%d', count)
else
    new = count + cost
end
if mode ~= '0' and new ~= count then
    if new == 0 then
        redis.call('DEL', key)  -- the same as a count of 0, in no memory
    else
        redis.call('SET', key, string.format('%d %d', tag, new), 'PX', keep_ms)
    end
    count = new
end
return '1 ' .. string.format('%d', count)
