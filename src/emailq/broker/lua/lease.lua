#!lua flags=allow-oom
-- Lease up to N ready messages to a worker: promote what is due, share N between the lanes
-- (emailq.scheduling.allot, step for step), pop each lane's oldest, and fence each with token+1.
-- A popped message past its expires_at is buried instead of leased (a ceremony change after
-- the ceremony is worse than none), so a lease may return fewer than it popped.
-- Safe to repeat: the jobs handed out are kept under the call's request key for as long as
-- the lease, and a second call with that key (redis-py sends a call again when its reply was
-- lost to a ConnectionError) returns those still leased with their tokens, leasing nothing.
-- KEYS[1]      message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]      payload key prefix "{p}:p:" (a payload is the string KEYS[2] .. id)
-- KEYS[3]      delayed zset (due time → id)
-- KEYS[4]      leased zset (lease expiry → id)
-- KEYS[5]      counts hash ("lane:state" → n)
-- KEYS[6]      credit hash (lane → smooth weighted round robin credit)
-- KEYS[7]      dead zset (died at → id)
-- KEYS[8]      final zset (finished at → "lane:state:id:tenant")
-- KEYS[9..13]  ready zsets in lease order: critical first, then the lanes that share
-- KEYS[14]     this call's request key "{p}:lreq:<request id>"
-- KEYS[15]     audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua)
-- KEYS[16]     tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]      now, or "" for the server's clock
-- ARGV[2]      lease seconds, from now
-- ARGV[3]      worker name
-- ARGV[4]      N, the most messages to lease
-- ARGV[5]      the most due messages to promote first
-- ARGV[6..10]  lane names in lease order
-- ARGV[11..14] weights of the sharing lanes (lanes 2..5)
-- ARGV[15]     the lanes this lease may take from, "1" or "0" per lane in lease order
--              ("10000": an express loop that only takes critical mail)
-- ARGV[16]     retention in ms (the Redis TTL of a message buried here)
-- ARGV[17]     a buried message's payload TTL in ms ("0": dropped at once)
-- Returns      10 per leased message, lane by lane, oldest first: id, token, lane, payload,
--              attempts, max_attempts (0: none), enqueued_at, tenant, expires_at (false: none),
--              rcpt (the envelope recipients left after a partial delivery; false: all)
-- Per-id keys are built from the prefix; they share the prefix's hash tag (one slot).
-- A repeated call: the jobs the first one handed out, as they are now, and nothing more.
local function replay(handed)
  local jobs, payloads = {}, {}
  for id, token in string.gmatch(handed, '([^,:]+):(%d+)') do
    local f = redis.call('HMGET', KEYS[1] .. id, 'state', 'token', 'lane', 'attempts',
      'max_attempts', 'enqueued_at', 'tenant', 'expires_at', 'rcpt')
    if f[1] == 'leased' and f[2] == token then
      local k = #jobs
      jobs[k + 1], jobs[k + 2], jobs[k + 3], jobs[k + 4] = id, tonumber(token), f[3], false
      jobs[k + 5], jobs[k + 6] = tonumber(f[4]), tonumber(f[5])
      jobs[k + 7], jobs[k + 8], jobs[k + 9], jobs[k + 10] = f[6], f[7], f[8] or false, f[9] or false
      payloads[#payloads + 1] = KEYS[2] .. id
    end
  end
  for j = 1, #payloads, 1000 do
    local got = redis.call('MGET', unpack(payloads, j, math.min(j + 999, #payloads)))
    for m = 1, #got do jobs[(j + m - 2) * 10 + 4] = got[m] end
  end
  return jobs
end
local handed = redis.call('GET', KEYS[14])
if handed then return replay(handed) end

local now = clock(ARGV[1])
local lanes, ready_key = {}, {}
for i = 1, 5 do
  lanes[i] = ARGV[5 + i]
  ready_key[ARGV[5 + i]] = KEYS[8 + i]
end
local delta = {}
local function count(field, n)
  delta[field] = (delta[field] or 0) + n
end

-- Promote: due scheduled and retrying messages join their lane (kept in step with promote.lua).
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ms(now), 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[5]))
for j = 1, #due, 2 do
  local id = due[j]
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'lane', 'tenant')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('HSET', msg, 'state', 'queued', 'updated_at', now)
    redis.call('ZADD', ready_key[f[2]], due[j + 1], id)
    tenant_ready_join(f[3], f[2], due[j + 1], id)
    count(f[2] .. ':' .. f[1], -1)
    count(f[2] .. ':queued', 1)
    tenant_count(f[3], f[2], f[1], -1)
    tenant_count(f[3], f[2], 'queued', 1)
  end
  redis.call('ZREM', KEYS[3], id)
end

-- Allot: critical takes what it can; the rest goes by smooth weighted round robin.
local n = tonumber(ARGV[4])
local ready, take, weight, credit = {}, {}, {}, {}
for i = 1, 5 do
  ready[i] = 0
  if string.sub(ARGV[15], i, i) == '1' then ready[i] = redis.call('ZCARD', KEYS[8 + i]) end
  take[i] = 0
end
local stored = redis.call('HMGET', KEYS[6], lanes[2], lanes[3], lanes[4], lanes[5])
for i = 2, 5 do
  weight[i] = tonumber(ARGV[9 + i])
  credit[i] = tonumber(stored[i - 1] or 0)
end
take[1] = math.min(n, ready[1])
local slots, shared = n - take[1], false
while slots > 0 do
  local total, best = 0, nil
  for i = 2, 5 do
    if ready[i] > take[i] then
      total = total + weight[i]
      credit[i] = credit[i] + weight[i]
      if best == nil or credit[i] > credit[best] then best = i end  -- ties: the higher lane
    end
  end
  if best == nil then break end
  credit[best] = credit[best] - total
  take[best] = take[best] + 1
  slots = slots - 1
  shared = true
end
if shared then
  redis.call('HSET', KEYS[6], lanes[2], credit[2], lanes[3], credit[3],
    lanes[4], credit[4], lanes[5], credit[5])
end

-- Take: pop each lane's oldest and hand them to the worker, or bury those past expires_at.
local now_n, now_ms = tonumber(now), ms(now)
local function bury_expired(msg, id, lane, tenant, last_error)
  local err = 'expired before it could be sent'  -- as emailq.broker.expiry.expired()
  if last_error then err = err .. '; last error: ' .. last_error end
  redis.call('HSET', msg, 'state', 'dead', 'last_error', err, 'updated_at', now)
  redis.call('PEXPIRE', msg, ARGV[16])
  expire_dead_payload(KEYS[2] .. id, ARGV[17])
  audit(id, event(now, 'dead', member('error', err)))
  redis.call('ZADD', KEYS[7], now_ms, id)
  redis.call('ZADD', KEYS[8], now_ms, final_member(lane, 'dead', id, tenant))
  count(lane .. ':queued', -1)
  count(lane .. ':dead', 1)
  tenant_count(tenant, lane, 'queued', -1)
  tenant_count(tenant, lane, 'dead', 1)
end
local expiry = tostring(ms(now_n + tonumber(ARGV[2])))  -- format once
local worker_member = member('worker', ARGV[3])
local jobs, expiries, payloads = {}, {}, {}
for i = 1, 5 do
  local popped = {}
  if take[i] > 0 then popped = redis.call('ZPOPMIN', KEYS[8 + i], take[i]) end
  local leased = 0
  for j = 1, #popped, 2 do
    local id = popped[j]
    local msg = KEYS[1] .. id
    local f = redis.call('HMGET', msg, 'state', 'attempts', 'max_attempts', 'token', 'enqueued_at',
      'tenant', 'expires_at', 'last_error', 'rcpt')
    if f[1] == 'queued' then tenant_ready_leave(f[6], lanes[i], id) end
    if f[1] == 'queued' and f[7] and tonumber(f[7]) <= now_n then
      bury_expired(msg, id, lanes[i], f[6], f[8])
    elseif f[1] == 'queued' then
      -- (a message stored before the field was named token has none yet: it starts at 1)
      local attempts, token = tonumber(f[2]) + 1, (tonumber(f[4]) or 0) + 1
      redis.call('HSET', msg, 'state', 'leased', 'attempts', attempts, 'token', token,
        'owner', ARGV[3], 'updated_at', now)
      leased = leased + 1
      audit(id, event(now, 'leased', worker_member .. ',"attempt":' .. attempts))
      tenant_count(f[6], lanes[i], 'queued', -1)
      tenant_count(f[6], lanes[i], 'leased', 1)
      expiries[#expiries + 1] = expiry
      expiries[#expiries + 1] = id
      payloads[#payloads + 1] = KEYS[2] .. id
      local k = #jobs
      jobs[k + 1], jobs[k + 2], jobs[k + 3], jobs[k + 4] = id, token, lanes[i], false
      jobs[k + 5], jobs[k + 6], jobs[k + 7], jobs[k + 8] = attempts, tonumber(f[3]), f[5], f[6]
      jobs[k + 9], jobs[k + 10] = f[7] or false, f[9] or false
    end
  end
  if leased > 0 then
    count(lanes[i] .. ':queued', -leased)
    count(lanes[i] .. ':leased', leased)
  end
end
for j = 1, #expiries, 1000 do  -- in chunks: unpack() has a limit
  redis.call('ZADD', KEYS[4], unpack(expiries, j, math.min(j + 999, #expiries)))
end
for j = 1, #payloads, 1000 do
  local got = redis.call('MGET', unpack(payloads, j, math.min(j + 999, #payloads)))
  for m = 1, #got do jobs[(j + m - 2) * 10 + 4] = got[m] end
end
for field, d in pairs(delta) do
  if d ~= 0 then redis.call('HINCRBY', KEYS[5], field, d) end
end
apply_tenant_counts()
if #jobs > 0 then
  local record = {}
  for j = 1, #jobs, 10 do record[#record + 1] = jobs[j] .. ':' .. jobs[j + 1] end
  redis.call('SET', KEYS[14], table.concat(record, ','), 'PX',
    math.ceil(tonumber(ARGV[2]) * 1000))
end
return jobs
