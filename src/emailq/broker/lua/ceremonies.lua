#!lua flags=allow-oom
-- Ceremonies that live wedding mail is for, from now to ARGV[2] seconds ahead. Index entries
-- of past ceremonies go first, and those of finished or purged messages as they are met, so
-- the index only holds what the next read needs (it frees memory: allowed when full).
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     ceremonies zset (ceremony in ms → id)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     seconds ahead
-- ARGV[3]     the most index entries looked at (the soonest ceremonies first)
-- Returns     {ceremony ms, live messages, …}, soonest first.
local now = clock(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ms(now))
local entries = redis.call('ZRANGEBYSCORE', KEYS[2], ms(now), ms(now + tonumber(ARGV[2])),
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local live = {queued = true, scheduled = true, leased = true, retrying = true}
local reply, gone = {}, {}
for i = 1, #entries, 2 do
  local id, at = entries[i], entries[i + 1]
  local state = redis.call('HGET', KEYS[1] .. id, 'state')
  if state and live[state] then
    if reply[#reply - 1] == at then
      reply[#reply] = reply[#reply] + 1
    else
      reply[#reply + 1] = at
      reply[#reply + 1] = 1
    end
  else
    gone[#gone + 1] = id
  end
end
for j = 1, #gone, 1000 do redis.call('ZREM', KEYS[2], unpack(gone, j, math.min(j + 999, #gone))) end
return reply
