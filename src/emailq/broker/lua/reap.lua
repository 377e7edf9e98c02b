-- Return messages whose lease expired to their lane, in their old place (the attempt stays
-- counted), or bury them when their attempts are spent. Idempotent: a reaped message is no
-- longer in the leased zset.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]     leased zset (lease expiry → id)
-- KEYS[4]     counts hash ("lane:state" → n)
-- KEYS[5]     final zset (finished at → "lane:state:id")
-- KEYS[6]     dead zset (died at → id)
-- KEYS[7..11] ready zsets, one per lane, in the order of the lane names below
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the most messages to reap
-- ARGV[3]     retention in ms (the Redis TTL of a dead message)
-- ARGV[4..8]  lane names
-- Returns     how many messages were reaped.
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
local function ms(t) return math.floor(tonumber(t) * 1000 + 0.5) end  -- zset scores: ms
-- Time is the broker's: ARGV[1] is an injected clock's (tests), or "" for Redis's own TIME,
-- the one clock every worker on every machine shares.
local function clock(given)
  if given ~= '' then return given end
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local ready = {}
for i = 1, 5 do ready[ARGV[3 + i]] = KEYS[6 + i] end
local delta = {}
local function move(lane, to)
  delta[lane .. ':leased'] = (delta[lane .. ':leased'] or 0) - 1
  delta[lane .. ':' .. to] = (delta[lane .. ':' .. to] or 0) + 1
end

local reaped = 0
local now = clock(ARGV[1])
local now_ms = ms(now)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms, 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'lane', 'attempts', 'max_attempts', 'available_at')
  redis.call('ZREM', KEYS[3], id)
  if f[1] == 'leased' then
    local lane = f[2]
    if tonumber(f[3]) >= tonumber(f[4]) then
      redis.call('HSET', msg, 'state', 'dead', 'updated_at', now,
        'last_error', 'lease expired on attempt ' .. f[3])
      redis.call('ZADD', KEYS[6], now_ms, id)
      redis.call('ZADD', KEYS[5], now_ms, lane .. ':dead:' .. id)
      redis.call('PEXPIRE', msg, ARGV[3])
      redis.call('PEXPIRE', KEYS[2] .. id, ARGV[3])
      move(lane, 'dead')
    else
      redis.call('HSET', msg, 'state', 'queued', 'updated_at', now)
      redis.call('ZADD', ready[lane], ms(f[5]), id)
      move(lane, 'queued')
    end
    reaped = reaped + 1
  end
end
for field, d in pairs(delta) do
  if d ~= 0 then redis.call('HINCRBY', KEYS[4], field, d) end
end
return reaped
