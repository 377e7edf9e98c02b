#!lua flags=allow-oom
-- Extend the leases still held: a message whose state is not leased or whose token is not the
-- token (its lease expired and was reaped, or re-leased to another worker) is skipped.
-- KEYS[1]  message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]  leased zset (lease expiry → id)
-- ARGV[1]  now, or "" for the server's clock
-- ARGV[2]  lease seconds, from now
-- ARGV[3..] 2 per lease: id, token
-- Returns  the ids whose lease was extended.
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
local now = clock(ARGV[1])
local expiry = ms(tonumber(now) + tonumber(ARGV[2]))
local extended = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'token')
  if f[1] == 'leased' and f[2] == ARGV[i + 1] then
    redis.call('ZADD', KEYS[2], expiry, id)
    redis.call('HSET', msg, 'updated_at', now)
    extended[#extended + 1] = id
  end
end
return extended
