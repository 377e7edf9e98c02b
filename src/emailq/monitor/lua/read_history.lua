-- Snapshots in a time range, oldest first, in one round trip.
-- KEYS[1] history (hash), KEYS[2] history index (zset)
-- ARGV[1] after (ms, exclusive), ARGV[2] until (ms, inclusive)
-- Returns slot, body, slot, body, …
local slots = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], ARGV[2])
local reply = {}
if #slots == 0 then
  return reply
end
local bodies = redis.call('HMGET', KEYS[1], unpack(slots))
for i, slot in ipairs(slots) do
  if bodies[i] then
    reply[#reply + 1] = slot
    reply[#reply + 1] = bodies[i]
  end
end
return reply
