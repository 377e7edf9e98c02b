#!lua flags=allow-oom
-- Delete the audit trails of messages accepted before a cut-off, on the broker's clock,
-- tenant by tenant from their trail indexes (written by enqueue.lua).
-- KEYS[1]  audit prefix "{p}:a:" (a trail is the list KEYS[1] .. id; a tenant's index the
--          zset KEYS[1] .. "idx:" .. tenant; the tenants the set KEYS[1] .. "tenants")
-- ARGV[1]  now, or "" for the server's clock
-- ARGV[2]  the most trails to delete
-- ARGV[3]  audit retention in seconds
-- Returns  how many trails were deleted.
local cutoff = '(' .. ms(tonumber(clock(ARGV[1])) - tonumber(ARGV[3]))
local left = tonumber(ARGV[2])
local removed = 0
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[1] .. 'tenants')) do
  if left <= 0 then break end
  local index = KEYS[1] .. 'idx:' .. tenant
  local old = redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, left)
  if #old > 0 then
    local trails = {}
    for j, id in ipairs(old) do trails[j] = KEYS[1] .. id end
    redis.call('UNLINK', unpack(trails))
    redis.call('ZREM', index, unpack(old))
    removed, left = removed + #old, left - #old
  end
  if redis.call('EXISTS', index) == 0 then redis.call('SREM', KEYS[1] .. 'tenants', tenant) end
end
return removed
