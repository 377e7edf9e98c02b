-- Take or renew the provider checker's lease.
-- KEYS[1]: the lease key ({prefix}:providers:checker)
-- ARGV[1]: the holder's name; ARGV[2]: the lease in milliseconds
-- Returns 1 when the caller holds the lease now, 0 while another holder's lease runs.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
