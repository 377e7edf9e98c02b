#!lua flags=allow-oom
-- Settle a batch of leased messages: complete, retry, bury, release or defer, each fenced by
-- its token.
-- A message whose state is not leased or whose stored token is not the given one is skipped:
-- a re-run of a settled batch, or a worker whose lease expired and was re-leased, changes nothing.
-- KEYS[1]      message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]      payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]      leased zset (lease expiry → id)
-- KEYS[4]      delayed zset (due time → id)
-- KEYS[5]      counts hash ("lane:state" → n)
-- KEYS[6]      final zset (finished at → "lane:state:id:tenant"), what purge_expired reads
-- KEYS[7]      dead zset (died at → id)
-- KEYS[8..12]  ready zsets, one per lane, in the order of the lane names below
-- KEYS[13]     audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua)
-- KEYS[14]     tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]      now, or "" for the server's clock
-- ARGV[2]      retention in ms (the Redis TTL of a finished message)
-- ARGV[3..7]   lane names
-- ARGV[8..12]  how many complete, retry, bury, release and defer outcomes follow, in order:
--              complete: id, token, note, attempt · retry: id, token, delay, error, rcpt,
--              attempt · bury: id, token, error, attempt · release: id, token · defer: id,
--              token, delay, error (attempt: the audit trail's attempt event's members)
--              (a retry's or burial's error of "" leaves none; a deferral's keeps the last;
--              a completion's note, if any, is kept as its last_error: recipients refused
--              for good; a retry's rcpt, if any, are the only recipients of its next attempt)
-- ARGV[13]     "1": keep a sent message's payload for the retention period; "": drop it
-- ARGV[14]     a dead message's payload TTL in ms ("0": dropped at once)
-- Returns      the ids settled.
-- Per-id keys are built from the prefixes; they share the prefix's hash tag (one slot).
local now = clock(ARGV[1])
local now_n, now_ms = tonumber(now), tostring(ms(now))  -- format once, not per message
local ready = {}
for i = 1, 5 do ready[ARGV[2 + i]] = KEYS[7 + i] end
local delta = {}  -- lane → state → change in count
local function move(lane, to, tenant)
  local d = delta[lane]
  if not d then d = {}; delta[lane] = d end
  d.leased = (d.leased or 0) - 1
  d[to] = (d[to] or 0) + 1
  tenant_count(tenant, lane, 'leased', -1)
  tenant_count(tenant, lane, to, 1)
end
local settled, finished = {}, {}
local keep_sent = ARGV[13] == '1'

-- The message's hash, lane and tenant when this token still holds its lease, else nil.
local function held(id, token)
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'token', 'lane', 'tenant')
  if f[1] ~= 'leased' or f[2] ~= token then return nil end
  settled[#settled + 1] = id
  return msg, f[3], f[4]
end

-- Sent and dead messages are kept for the retention period (a sent one without its payload,
-- unless ARGV[13] asks to keep it).
local function finish(msg, id, lane, tenant, state)
  redis.call('HSET', msg, 'state', state, 'updated_at', now)
  redis.call('PEXPIRE', msg, ARGV[2])
  if state == 'dead' then
    expire_dead_payload(KEYS[2] .. id, ARGV[14])
  elseif state ~= 'sent' or keep_sent then  -- a sent one's payload is gone already (the end)
    redis.call('PEXPIRE', KEYS[2] .. id, ARGV[2])
  end
  if state ~= 'sent' then redis.call('ZADD', KEYS[7], now_ms, id)
  elseif not keep_sent then redis.call('HDEL', msg, 'rcpt') end  -- addresses go with the body
  finished[#finished + 1] = now_ms
  finished[#finished + 1] = final_member(lane, state, id, tenant)
  move(lane, state, tenant)
end

local function set_error(msg, err)
  if err == '' then redis.call('HDEL', msg, 'last_error')
  else redis.call('HSET', msg, 'last_error', err) end
end

local function bury(msg, id, lane, tenant, err, attempt)
  set_error(msg, err)
  finish(msg, id, lane, tenant, 'dead')
  if attempt then audit(id, event(now, 'attempt', attempt), event(now, 'dead', member('error', err)))
  else audit(id, event(now, 'dead', member('error', err))) end
end


-- Retried at its due time, unless that is at or past its expires_at (false: none) or its
-- explicit max_attempts (0: none) are spent: then it is buried, saying so.
local function retry(i)
  local id, due, err, rcpt = ARGV[i], now_n + tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local attempt = ARGV[i + 5]
  local msg, lane, tenant = held(id, ARGV[i + 1])
  if not msg then return end
  local f = redis.call('HMGET', msg, 'attempts', 'max_attempts', 'enqueued_at', 'expires_at')
  local attempts, max_attempts = tonumber(f[1]), tonumber(f[2])
  if (max_attempts > 0 and attempts >= max_attempts) or (f[4] and due >= tonumber(f[4])) then
    return bury(msg, id, lane, tenant, gave_up(attempts, now_n - tonumber(f[3]), err), attempt)
  end
  set_error(msg, err)
  if rcpt ~= '' then redis.call('HSET', msg, 'rcpt', rcpt) end
  redis.call('HSET', msg, 'state', 'retrying', 'available_at', fmt(due), 'updated_at', now)
  redis.call('ZADD', KEYS[4], ms(due), id)
  move(lane, 'retrying', tenant)
  audit(id, event(now, 'attempt', attempt), event(now, 'retried', ',"due":' .. fmt(due)))
end

local function bury_one(i)
  local msg, lane, tenant = held(ARGV[i], ARGV[i + 1])
  if msg then bury(msg, ARGV[i], lane, tenant, ARGV[i + 2], ARGV[i + 3]) end
end

-- Released mail goes back to its place in its lane; the attempt is not counted.
local function release(i)
  local id = ARGV[i]
  local msg, lane, tenant = held(id, ARGV[i + 1])
  if not msg then return end
  redis.call('HINCRBY', msg, 'attempts', -1)
  redis.call('HSET', msg, 'state', 'queued', 'updated_at', now)
  local since = ms(redis.call('HGET', msg, 'available_at'))
  redis.call('ZADD', ready[lane], since, id)
  tenant_ready_join(tenant, lane, since, id)
  move(lane, 'queued', tenant)
  audit(id, event(now, 'released'))
end

-- Not tried: retrying after its delay with the attempt given back, buried only past its
-- expires_at (false: never), as emailq.broker.expiry.after_deferral() does.
local function defer(i)
  local id, due, err = ARGV[i], now_n + tonumber(ARGV[i + 2]), ARGV[i + 3]
  local msg, lane, tenant = held(id, ARGV[i + 1])
  if not msg then return end
  redis.call('HINCRBY', msg, 'attempts', -1)
  local f = redis.call('HMGET', msg, 'expires_at', 'last_error')
  if err == '' then err = f[2] or '' end
  if f[1] and due >= tonumber(f[1]) then
    local why = 'expired before it could be sent'
    if err ~= '' then why = why .. '; last error: ' .. err end
    return bury(msg, id, lane, tenant, why)
  end
  if err ~= '' then redis.call('HSET', msg, 'last_error', err) end
  redis.call('HSET', msg, 'state', 'retrying', 'available_at', fmt(due), 'updated_at', now)
  redis.call('ZADD', KEYS[4], ms(due), id)
  move(lane, 'retrying', tenant)
  audit(id, event(now, 'deferred', ',"due":' .. fmt(due)))
end

-- What frees memory goes first: a Redis at maxmemory (this script may run there, flags
-- allow-oom) gets room back before anything is written. The completed messages' payloads are
-- dropped before any other change, and the leased index shrinks before the final one grows.
local i, sent = 15, {}
for _ = 1, tonumber(ARGV[8]) do
  local msg, lane, tenant = held(ARGV[i], ARGV[i + 1])
  if msg then sent[#sent + 1] = {msg, ARGV[i], lane, tenant, ARGV[i + 2], ARGV[i + 3]} end
  i = i + 4
end
for j = 1, keep_sent and 0 or #sent, 1000 do  -- in chunks: unpack() has a limit
  local payloads = {}
  for m = j, math.min(j + 999, #sent) do payloads[#payloads + 1] = KEYS[2] .. sent[m][2] end
  redis.call('UNLINK', unpack(payloads))
end
for _, s in ipairs(sent) do
  if s[5] ~= '' then redis.call('HSET', s[1], 'last_error', s[5]) end
  finish(s[1], s[2], s[3], s[4], 'sent')
  audit(s[2], event(now, 'attempt', s[6]), event(now, 'sent'))
end
for section, step in ipairs({{retry, 6}, {bury_one, 4}, {release, 2}, {defer, 4}}) do
  for _ = 1, tonumber(ARGV[8 + section]) do
    step[1](i)
    i = i + step[2]
  end
end
for j = 1, #settled, 1000 do
  redis.call('ZREM', KEYS[3], unpack(settled, j, math.min(j + 999, #settled)))
end
for j = 1, #finished, 1000 do
  redis.call('ZADD', KEYS[6], unpack(finished, j, math.min(j + 999, #finished)))
end
for lane, d in pairs(delta) do
  for state, n in pairs(d) do redis.call('HINCRBY', KEYS[5], lane .. ':' .. state, n) end
end
apply_tenant_counts()
return settled
