-- Replace a payload only if it is still the one read (emailq rotate-keys re-seals without a
-- lock: a payload sent, erased or re-sealed meanwhile is left as it is). Its TTL is kept.
-- KEYS[1]  the payload key "{p}:p:<id>"
-- ARGV[1]  the payload as read
-- ARGV[2]  the payload to store instead
-- Returns  1 when replaced, else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
