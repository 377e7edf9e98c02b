-- Take or renew the monitor writer's lease.
-- KEYS[1] lease key (string: owner, with a TTL)
-- ARGV[1] owner, ARGV[2] ttl in milliseconds
-- Returns 1 when the caller holds the lease now, 0 when another owner does.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
