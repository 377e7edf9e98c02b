-- Give dead messages a fresh start: queued again now, attempts 0, expires_at now + their lane's
-- maximum age; token is NOT reset, so tokens from earlier leases stay stale. Idempotent: a
-- requeued message is no longer dead.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]     dead zset (died at → id)
-- KEYS[4]     counts hash ("lane:state" → n)
-- KEYS[5]     final zset (finished at → "lane:state:id:tenant")
-- KEYS[6..10] ready zsets, one per lane, in the order of the lane names below
-- KEYS[11]    audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua)
-- KEYS[12]    tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the most messages to requeue
-- ARGV[3]     "ids" to requeue the ids that follow, "all" for the longest dead first
-- ARGV[4..8]  lane names
-- ARGV[9..13] each lane's maximum age in seconds
-- ARGV[14]    only those that died at or after this time, or "" for any
-- ARGV[15]    only this lane's, or ""
-- ARGV[16]    only this tenant's, or ""
-- ARGV[17..]  message ids (with "ids")
-- Returns     how many messages were requeued.
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
local ready, max_age = {}, {}
for i = 1, 5 do
  ready[ARGV[3 + i]] = KEYS[5 + i]
  max_age[ARGV[3 + i]] = tonumber(ARGV[8 + i])
end
local now = clock(ARGV[1])
local limit = tonumber(ARGV[2])
if limit < 1 then return 0 end
local since, only_lane, only_tenant = ARGV[14], ARGV[15], ARGV[16]
local SCAN_MOST = 100000  -- dead records looked at by one call: a script blocks the server

local delta = {}
local requeued = 0
-- "dead" when the message is dead and passes the filters (and is requeued), "other" when it
-- is dead but filtered out, "gone" when it is not dead (no longer, or never).
local function requeue(id)
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'lane', 'tenant', 'updated_at')
  local lane = f[2]
  if f[1] ~= 'dead' then return 'gone' end
  if (only_lane ~= '' and lane ~= only_lane) or (only_tenant ~= '' and f[3] ~= only_tenant)
      or (since ~= '' and tonumber(f[4]) < tonumber(since)) then
    return 'other'
  end
  redis.call('HSET', msg, 'state', 'queued', 'attempts', '0', 'available_at', now,
    'updated_at', now, 'expires_at', fmt(tonumber(now) + max_age[lane]))
  redis.call('PERSIST', msg)
  redis.call('PERSIST', KEYS[2] .. id)
  redis.call('ZADD', ready[lane], ms(now), id)
  tenant_ready_join(f[3], lane, ms(now), id)
  redis.call('ZREM', KEYS[5], final_member(lane, 'dead', id, f[3]), lane .. ':dead:' .. id)
  delta[lane] = (delta[lane] or 0) + 1
  tenant_count(f[3], lane, 'dead', -1)
  tenant_count(f[3], lane, 'queued', 1)
  requeued = requeued + 1
  audit(id, event(now, 'requeued', ',"why":"dead mail requeued"'))
  return 'dead'
end

if ARGV[3] == 'all' then
  local low, kept, looked = '-inf', 0, 0  -- kept: dead but filtered out, still in the zset
  if since ~= '' then low = ms(since) end
  while requeued < limit and looked < SCAN_MOST do
    local ids = redis.call('ZRANGEBYSCORE', KEYS[3], low, '+inf', 'LIMIT', kept, 500)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      if requeued >= limit then break end
      looked = looked + 1
      if requeue(id) == 'other' then kept = kept + 1 else redis.call('ZREM', KEYS[3], id) end
    end
  end
else
  for i = 17, #ARGV do
    if requeued >= limit then break end
    if requeue(ARGV[i]) ~= 'other' then redis.call('ZREM', KEYS[3], ARGV[i]) end
  end
end
for lane, n in pairs(delta) do
  redis.call('HINCRBY', KEYS[4], lane .. ':dead', -n)
  redis.call('HINCRBY', KEYS[4], lane .. ':queued', n)
end
apply_tenant_counts()
return requeued
