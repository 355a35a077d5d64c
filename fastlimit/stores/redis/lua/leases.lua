-- fastlimit: concurrency leases of one key, atomically (a script runs alone,
-- so "drop the expired, count, add" cannot interleave with another acquire:
-- no over-admission at any instant).
--
-- Across hosts a dead holder cannot be seen by its pid, so every lease
-- expires: a lease is a member of a sorted set whose score is the time it
-- expires, in ms.  Holders renew theirs; a holder that dies stops renewing,
-- and its lease stops counting when its time is up.
--
-- KEYS[1]: the key's sorted set: member = lease token, score = expiry (ms).
-- ARGV[1]: 'acquire', 'release', 'renew' or 'count'.
-- ARGV[2]: now in ms; '' means the server's TIME.
-- ARGV[3]: the lease's token (acquire, release, renew).
-- ARGV[4]: the lease time to live in ms (acquire, renew).
-- ARGV[5]: the key's limit (acquire).
--
-- A lease is live while its score > now.  Replies (strings):
--   acquire: '<got> <dropped>': got 1 if the token now holds a lease, 0 if
--            the key is full; dropped = expired leases removed on the way.
--   release: '1' if the lease was live (it is gone either way), else '0'.
--   renew:   '1' if the lease was live and now expires at now + ttl, '0' if
--            it had expired or was never held (it is not revived).
--   count:   the live leases.
-- The set expires (PEXPIRE) with its last lease, so an idle key costs no
-- memory.  Every number is an integer below 2^53: exact in a double.

if redis.replicate_commands then
    redis.replicate_commands()  -- Redis 3.2-4.x: replicate effects, not TIME
end

local key = KEYS[1]
local mode = ARGV[1]
local now
if ARGV[2] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
    now = tonumber(ARGV[2])
end

local function ms(x)
    return string.format('%d', x)
end

local function keep()
    -- the set lives as long as its latest lease
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] then
        redis.call('PEXPIRE', key, ms(math.max(tonumber(last[2]) - now, 1)))
    end
end

if mode == 'count' then
    return tostring(redis.call('ZCOUNT', key, '(' .. ms(now), '+inf'))
end

local token = ARGV[3]
if mode == 'acquire' then
    local dropped = redis.call('ZREMRANGEBYSCORE', key, '-inf', ms(now))
    if redis.call('ZCARD', key) >= tonumber(ARGV[5]) then
        return '0 ' .. dropped
    end
    -- NX: a token already present (two random 62-bit tokens alike) is a
    -- denial, never two holders sharing one lease
    if redis.call('ZADD', key, 'NX', ms(now + tonumber(ARGV[4])), token) == 0 then
        return '0 ' .. dropped
    end
    keep()
    return '1 ' .. dropped
end

local score = redis.call('ZSCORE', key, token)
local live = score and tonumber(score) > now
if mode == 'release' then
    if score then
        redis.call('ZREM', key, token)
    end
    return live and '1' or '0'
end
-- renew
if not live then
    if score then
        redis.call('ZREM', key, token)
    end
    return '0'
end
redis.call('ZADD', key, 'XX', ms(now + tonumber(ARGV[4])), token)
keep()
return '1'
