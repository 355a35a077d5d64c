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
-- A stored period newer than the client's wins (lib.lua: quota_read): a key
-- never moves back to an older period, so no count is reset twice.

local key = KEYS[1]
local mode = ARGV[1]
local cost = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local tag, count, keep_ms = quota_read(key, tonumber(ARGV[2]), ARGV[5])

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
    quota_write(key, tag, new, keep_ms)
    count = new
end
return '1 ' .. string.format('%d', count)
