-- Store one history snapshot: only by the lease holder, at most once per slot.
-- KEYS[1] lease (string), KEYS[2] history (hash: slot ms → body),
-- KEYS[3] history index (zset: slot ms → slot ms), KEYS[4] cursor (string: a stream id),
-- KEYS[5] samples (stream)
-- ARGV[1] owner, ARGV[2] slot in ms, ARGV[3] body, ARGV[4] new cursor ('' : unchanged),
-- ARGV[5] first stream id to keep ('' : keep all), ARGV[6] drop slots before (ms),
-- ARGV[7] most slots kept
-- Returns 1 when written, 0 when the slot was written already, -1 when not the holder.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('XTRIM', KEYS[5], 'MINID', ARGV[5])
end
-- Past the retention, or beyond the most kept: bounded batches, so one call stays short.
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[6], 'LIMIT', 0, 1000)
local extra = redis.call('ZCARD', KEYS[3]) - #old - tonumber(ARGV[7])
if extra > 0 then
  local surplus = redis.call('ZRANGE', KEYS[3], #old, #old + math.min(extra, 1000) - 1)
  for _, slot in ipairs(surplus) do
    old[#old + 1] = slot
  end
end
if #old > 0 then
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[3], unpack(old))
end
return 1
