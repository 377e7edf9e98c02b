#!lua flags=allow-oom
-- Cancel one message that no worker holds (queued, scheduled or retrying); it drops its payload
-- and is kept for the retention period. Idempotent: a cancelled message is not cancelled again.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]     delayed zset (due time → id)
-- KEYS[4]     counts hash ("lane:state" → n)
-- KEYS[5]     final zset (finished at → "lane:state:id:tenant")
-- KEYS[6..10] ready zsets, one per lane, in the order of the lane names below
-- KEYS[11]    audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua)
-- KEYS[12]    tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the message id
-- ARGV[3]     retention in ms (the Redis TTL of a cancelled message)
-- ARGV[4..8]  lane names
-- Returns     1 when cancelled, else 0.
-- The message's key is built from the prefix; it shares the prefix's hash tag (one slot).
local ready = {}
for i = 1, 5 do ready[ARGV[3 + i]] = KEYS[5 + i] end
local now = clock(ARGV[1])
local id = ARGV[2]
local msg = KEYS[1] .. id
local f = redis.call('HMGET', msg, 'state', 'lane', 'tenant')
local state, lane = f[1], f[2]
if state == 'queued' then
  redis.call('ZREM', ready[lane], id)
  tenant_ready_leave(f[3], lane, id)
elseif state == 'scheduled' or state == 'retrying' then
  redis.call('ZREM', KEYS[3], id)
else
  return 0
end
redis.call('HSET', msg, 'state', 'cancelled', 'updated_at', now)
redis.call('UNLINK', KEYS[2] .. id)
redis.call('ZADD', KEYS[5], ms(now), final_member(lane, 'cancelled', id, f[3]))
redis.call('PEXPIRE', msg, ARGV[3])
redis.call('HINCRBY', KEYS[4], lane .. ':' .. state, -1)
redis.call('HINCRBY', KEYS[4], lane .. ':cancelled', 1)
tenant_count(f[3], lane, state, -1)
tenant_count(f[3], lane, 'cancelled', 1)
apply_tenant_counts()
audit(id, event(now, 'cancelled'))
return 1
