-- Shared rate limits (GCRA), several requests in one call; all-or-nothing per request.
-- KEYS[1]  key prefix, with the queue's hash tag (e.g. "{emailq}:rl:"); limit keys are
--          KEYS[1] .. name, so every key stays in the queue's cluster slot
-- ARGV[1]  number of requests R; then for each request:
--          cost, reserve, number of limits L, then L times: name, interval_us, burst
--          (reserve: the share of each burst that must remain after it is granted; a burst
--          too small to keep one beside the request keeps none, as ratelimit/base.py)
-- Returns  R flags (1 granted, 0 denied), then the shortest wait of a denied request in µs.
-- Time is the Redis server's: every worker on every machine reads the same clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local flags = {}
local wait = 0
local i = 2
for r = 1, tonumber(ARGV[1]) do
  local cost, reserve, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local longest = 0
  local updates = {}
  for _ = 1, n do
    local key = KEYS[1] .. ARGV[i]
    local interval = tonumber(ARGV[i + 1]); local burst = tonumber(ARGV[i + 2]); i = i + 3
    local tat = tats[key]
    if tat == nil then tat = tonumber(redis.call('GET', key) or now) end
    local new_tat = math.max(tat, now) + cost * interval
    local spendable = math.max(burst * (1 - reserve), math.min(cost, burst))
    local ahead = new_tat - spendable * interval - now
    if ahead <= 1 then ahead = 0 end  -- a microsecond early is on time (float error)
    if ahead > longest then longest = ahead end
    updates[#updates + 1] = {key, new_tat}
  end
  if longest > 0 then
    flags[r] = 0
    if wait == 0 or longest < wait then wait = longest end
  else
    flags[r] = 1
    for _, u in ipairs(updates) do tats[u[1]] = u[2] end
  end
end
for key, tat in pairs(tats) do
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
flags[#flags + 1] = math.ceil(wait)
return flags
