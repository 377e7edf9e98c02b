#!lua flags=no-writes
-- Scheduled and retrying messages due by now + ARGV[2] seconds, and their lanes.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     delayed zset (due time → id)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     seconds ahead
-- ARGV[3]     the most messages whose lane is looked up
-- Returns     {total due, looked up, lane, n, lane, n, …}: past the limit the caller splits
--             the total by the looked-up messages' lanes.
local upto = ms(clock(ARGV[1]) + tonumber(ARGV[2]))
local total = redis.call('ZCOUNT', KEYS[2], '-inf', upto)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', upto, 'LIMIT', 0, tonumber(ARGV[3]))
local per_lane = {}
for _, id in ipairs(ids) do
  local lane = redis.call('HGET', KEYS[1] .. id, 'lane')
  if lane then per_lane[lane] = (per_lane[lane] or 0) + 1 end
end
local reply = {total, #ids}
for lane, n in pairs(per_lane) do
  reply[#reply + 1] = lane
  reply[#reply + 1] = n
end
return reply
