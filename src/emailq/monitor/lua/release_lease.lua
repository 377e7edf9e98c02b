-- Give up the monitor writer's lease, if the caller holds it.
-- KEYS[1] lease key; ARGV[1] owner
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
