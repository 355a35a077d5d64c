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

local key = KEYS[1]
local mode = ARGV[1]
local now = lease_now(ARGV[2])

if mode == 'count' then
    return tostring(redis.call('ZCOUNT', key, '(' .. ms(now), '+inf'))
end

local token = ARGV[3]
if mode == 'acquire' then
    local room, dropped = lease_room(key, now, tonumber(ARGV[5]))
    if room and lease_add(key, now, tonumber(ARGV[4]), token) then
        return '1 ' .. dropped
    end
    return '0 ' .. dropped
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
lease_keep(key, now)
return '1'
