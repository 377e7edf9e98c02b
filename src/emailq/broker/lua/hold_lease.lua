-- Take or renew a named lease (one autoscaler per queue): free, expired, or already ours.
-- KEYS[1]     the lease's key, a string "holder|expires at"
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the holder
-- ARGV[3]     seconds the lease lasts
-- Returns     1 when the holder has it now, 0 while another holder's lease lasts.
-- The expiry is kept in the value, on the broker's clock (an injected one in tests); the
-- key's own TTL only clears it away later.
local now = tonumber(clock(ARGV[1]))
local ttl = tonumber(ARGV[3])
local held = redis.call('GET', KEYS[1])
if held then
  local holder, expires = string.match(held, '^(.*)|([^|]*)$')
  if holder ~= ARGV[2] and tonumber(expires) > now then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. fmt(now + ttl), 'PX', math.ceil(ttl * 1000) + 60000)
return 1
