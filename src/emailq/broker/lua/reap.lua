#!lua flags=allow-oom
-- Return messages whose lease expired to their lane, in their old place (the attempt stays
-- counted), or bury them when they are past their expires_at or their explicit max_attempts
-- are spent. Idempotent: a reaped message is no longer in the leased zset.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]     leased zset (lease expiry → id)
-- KEYS[4]     counts hash ("lane:state" → n)
-- KEYS[5]     final zset (finished at → "lane:state:id:tenant")
-- KEYS[6]     dead zset (died at → id)
-- KEYS[7..11] ready zsets, one per lane, in the order of the lane names below
-- KEYS[12]    audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua)
-- KEYS[13]    tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the most messages to reap
-- ARGV[3]     retention in ms (the Redis TTL of a dead message)
-- ARGV[4..8]  lane names
-- ARGV[9]     a dead message's payload TTL in ms ("0": dropped at once)
-- Returns     how many messages were reaped.
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
local ready = {}
for i = 1, 5 do ready[ARGV[3 + i]] = KEYS[6 + i] end
local delta = {}
local function move(lane, to, tenant)
  delta[lane .. ':leased'] = (delta[lane .. ':leased'] or 0) - 1
  delta[lane .. ':' .. to] = (delta[lane .. ':' .. to] or 0) + 1
  tenant_count(tenant, lane, 'leased', -1)
  tenant_count(tenant, lane, to, 1)
end


local reaped = 0
local now = clock(ARGV[1])
local now_n, now_ms = tonumber(now), ms(now)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms, 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'lane', 'attempts', 'max_attempts', 'available_at',
    'enqueued_at', 'expires_at', 'tenant')
  redis.call('ZREM', KEYS[3], id)
  if f[1] == 'leased' then
    local lane, attempts, max_attempts = f[2], tonumber(f[3]), tonumber(f[4])
    if (max_attempts > 0 and attempts >= max_attempts) or (f[7] and now_n >= tonumber(f[7])) then
      local why = 'lease expired on attempt ' .. attempts
      redis.call('HSET', msg, 'state', 'dead', 'updated_at', now,
        'last_error', gave_up(attempts, now_n - tonumber(f[6]), why))
      redis.call('ZADD', KEYS[6], now_ms, id)
      redis.call('ZADD', KEYS[5], now_ms, final_member(lane, 'dead', id, f[8]))
      redis.call('PEXPIRE', msg, ARGV[3])
      expire_dead_payload(KEYS[2] .. id, ARGV[9])
      move(lane, 'dead', f[8])
      audit(id, event(now, 'dead', member('error', why)))
    else
      redis.call('HSET', msg, 'state', 'queued', 'updated_at', now)
      redis.call('ZADD', ready[lane], ms(f[5]), id)
      tenant_ready_join(f[8], lane, ms(f[5]), id)
      move(lane, 'queued', f[8])
      audit(id, event(now, 'requeued', ',"why":"lease expired"'))
    end
    reaped = reaped + 1
  end
end
for field, d in pairs(delta) do
  if d ~= 0 then redis.call('HINCRBY', KEYS[4], field, d) end
end
apply_tenant_counts()
return reaped
