#!lua flags=allow-oom
-- Delete finished messages (sent, dead, cancelled) older than a cut-off, on the broker's clock.
-- Their hashes also carry a Redis TTL of the retention period; this removes the index entries
-- and the counts too, whether or not the TTL already took the hash.
-- KEYS[1]  message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]  payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]  final zset (finished at → "lane:state:id:tenant")
-- KEYS[4]  dead zset (died at → id)
-- KEYS[5]  counts hash ("lane:state" → n)
-- KEYS[6]  tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]  now, or "" for the server's clock
-- ARGV[2]  the most messages to delete
-- ARGV[3]  retention in seconds: messages finished before now - retention go
-- Returns  how many index entries were removed.
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
local cutoff = tonumber(clock(ARGV[1])) - tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ms(cutoff), 'LIMIT', 0,
  tonumber(ARGV[2]))
local delta = {}
for _, member in ipairs(old) do
  local lane, state, id, tenant = string.match(member, '^([^:]+):([^:]+):([^:]+):?(.*)$')
  local msg = KEYS[1] .. id
  local now_state = redis.call('HGET', msg, 'state')
  if now_state == false or now_state == state then  -- false: the TTL took it already
    redis.call('UNLINK', msg, KEYS[2] .. id)
    if state == 'dead' then redis.call('ZREM', KEYS[4], id) end
    delta[lane .. ':' .. state] = (delta[lane .. ':' .. state] or 0) - 1
    tenant_count(tenant, lane, state, -1)
  end
  redis.call('ZREM', KEYS[3], member)
end
for field, d in pairs(delta) do redis.call('HINCRBY', KEYS[5], field, d) end
apply_tenant_counts()
return #old
