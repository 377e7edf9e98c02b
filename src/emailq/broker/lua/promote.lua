#!lua flags=allow-oom
-- Make due scheduled and retrying messages ready: each joins its lane at its due time.
-- (lease.lua runs the same step first; keep the two in step.)
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     delayed zset (due time → id)
-- KEYS[3]     counts hash ("lane:state" → n)
-- KEYS[4..8]  ready zsets, one per lane, in the order of the lane names below
-- KEYS[9]     tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the most messages to promote
-- ARGV[3..7]  lane names
-- Returns     how many messages were promoted.
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
local ready = {}
for i = 1, 5 do ready[ARGV[2 + i]] = KEYS[3 + i] end
local delta = {}
local function count(field, n)
  delta[field] = (delta[field] or 0) + n
end

local now = clock(ARGV[1])
local promoted = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ms(now), 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
for j = 1, #due, 2 do
  local id = due[j]
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'lane', 'tenant')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('HSET', msg, 'state', 'queued', 'updated_at', now)
    redis.call('ZADD', ready[f[2]], due[j + 1], id)
    tenant_ready_join(f[3], f[2], due[j + 1], id)
    count(f[2] .. ':' .. f[1], -1)
    count(f[2] .. ':queued', 1)
    tenant_count(f[3], f[2], f[1], -1)
    tenant_count(f[3], f[2], 'queued', 1)
    promoted = promoted + 1
  end
  redis.call('ZREM', KEYS[2], id)
end
for field, d in pairs(delta) do
  if d ~= 0 then redis.call('HINCRBY', KEYS[3], field, d) end
end
apply_tenant_counts()
return promoted
