-- Store a batch of new messages; ids come from the client, so a re-run stores nothing twice.
-- The payloads arrive by an MSET in the same MULTI (they are large, and Lua would copy them
-- twice): a message that is not stored (its idempotency key has an owner) drops its payload.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     idempotency key prefix "{p}:idem:" (+ tenant .. "\31" .. key)
-- KEYS[3]     payload key prefix "{p}:p:" (a payload is the string KEYS[3] .. id)
-- KEYS[4]     delayed zset (due time → id)
-- KEYS[5]     counts hash ("lane:state" → n)
-- KEYS[6..10] ready zsets, one per lane, in the order of the lane names below (critical first)
-- KEYS[11]    recipient index prefix "{p}:r:" (+ a recipient's keyed hash: a set of ids)
-- KEYS[12]    batch prefix "{p}:b:" (+ a batch id: a zset of its message ids, scored 0 so
--             they sort by id, which is time-ordered)
-- KEYS[13]    ceremonies zset (ceremony in ms → id of wedding mail; ceremonies.lua trims it)
-- KEYS[14]    audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua); the trail's tenant index
--             is the zset prefix .. "idx:" .. tenant (accepted at → id), tenants the set
--             prefix .. "tenants"
-- KEYS[15]    tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     idempotency window in ms (the Redis TTL of a key)
-- ARGV[3]     the same window in seconds (a key claimed now stops counting then)
-- ARGV[4..8]  lane names
-- ARGV[9..13] each lane's maximum age in seconds (a message's default expires_at is that
--             long after it is first due)
-- ARGV[14]    how long a recipient index or batch set lives after its last message, in ms
-- ARGV[15..]  11 per message: id, lane, tenant, idempotency key or "", send_at or "",
--             max_attempts (0: no limit), expires_at or "", recipient hashes (space-
--             separated, or ""), the accepted event's members (',"tenant":…', JSON),
--             batch id or "", ceremony (epoch seconds) or ""
-- Returns     one id per message: its own, or the id that already owns its idempotency key.
-- Per-id keys are built from the prefixes; they share the prefix's hash tag (one slot).
local score = {}  -- due → its score, formatted once (a batch mostly shares one due time)
local function score_of(due)
  local s = score[due]
  if not s then s = tostring(ms(due)); score[due] = s end
  return s
end
local now_text = clock(ARGV[1])
local now = tonumber(now_text)
local key_ends = fmt(now + tonumber(ARGV[3]))
local ready, max_age = {}, {}
for i = 1, 5 do
  ready[ARGV[3 + i]] = KEYS[5 + i]
  max_age[ARGV[3 + i]] = tonumber(ARGV[8 + i])
end
local delta = {}
local function count(field)
  delta[field] = (delta[field] or 0) + 1
end

-- The id already holding this idempotency key, or nil after claiming it for ``id``.
local function claim(scope, id)
  local idem = KEYS[2] .. scope
  local held = redis.call('GET', idem)
  if held then
    local sep = string.find(held, '|', 1, true)
    if tonumber(string.sub(held, sep + 1)) > now then return string.sub(held, 1, sep - 1) end
  end
  redis.call('SET', idem, id .. '|' .. key_ends, 'PX', ARGV[2])
  return nil
end

local audited = {}  -- tenants with mail in this batch: their trail's index grows
local now_ms = score_of(now)
local lined_up = {}  -- zset key → {score, id, score, id, ...}, added in one ZADD each
local function line_up(key, score, id)
  local list = lined_up[key]
  if not list then list = {}; lined_up[key] = list end
  list[#list + 1] = score
  list[#list + 1] = id
end

local function store(i, msg)
  local id, lane, key, due, expires = ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], ARGV[i + 6]
  local state = 'queued'
  if due ~= '' and tonumber(due) > now then state = 'scheduled' else due = now_text end
  if expires == '' then expires = fmt(tonumber(due) + max_age[lane]) end
  redis.call('HSET', msg, 'state', state, 'lane', lane,
    'tenant', ARGV[i + 2], 'attempts', '0', 'max_attempts', ARGV[i + 5], 'token', '0',
    'enqueued_at', now_text, 'updated_at', now_text, 'available_at', due, 'expires_at', expires)
  if key ~= '' then redis.call('HSET', msg, 'idem', key) end
  local batch = ARGV[i + 9]
  if batch ~= '' then
    redis.call('HSET', msg, 'batch', batch)
    redis.call('ZADD', KEYS[12] .. batch, 0, id)
    redis.call('PEXPIRE', KEYS[12] .. batch, ARGV[14])
  end
  local ceremony = ARGV[i + 10]
  if ceremony ~= '' then line_up(KEYS[13], score_of(tonumber(ceremony)), id) end
  if state == 'queued' then
    line_up(ready[lane], score_of(due), id)
    if ARGV[i + 2] ~= '' then line_up(tenant_ready_key(ARGV[i + 2], lane), score_of(due), id) end
  else
    line_up(KEYS[4], score_of(due), id)
  end
  count(lane .. ':' .. state)
  tenant_count(ARGV[i + 2], lane, state, 1)
  for hash in string.gmatch(ARGV[i + 7], '%S+') do
    redis.call('SADD', KEYS[11] .. hash, id)
    redis.call('PEXPIRE', KEYS[11] .. hash, ARGV[14])
  end
  if AUDITING then
    if state == 'scheduled' then
      audit(id, event(now_text, 'accepted', ARGV[i + 8]), event(now_text, 'scheduled', ',"due":' .. due))
    else
      audit(id, event(now_text, 'accepted', ARGV[i + 8]))
    end
    line_up(AUDIT .. 'idx:' .. ARGV[i + 2], now_ms, id)
    audited[ARGV[i + 2]] = true
  end
end


-- A re-run finds its messages stored: check one by one only when any is.
local msgs = {}
for i = 15, #ARGV, 11 do msgs[#msgs + 1] = KEYS[1] .. ARGV[i] end
local rerun = false
for j = 1, #msgs, 1000 do  -- in chunks: unpack() has a limit
  rerun = rerun or redis.call('EXISTS', unpack(msgs, j, math.min(j + 999, #msgs))) > 0
end

local ids = {}
for i = 15, #ARGV, 11 do
  local id, tenant, key = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  local msg = msgs[#ids + 1]
  local owner = id
  local state = rerun and redis.call('HGET', msg, 'state')
  if not state then
    if key ~= '' then owner = claim(tenant .. '\31' .. key, id) or id end
    if owner == id then store(i, msg) else redis.call('UNLINK', KEYS[3] .. id) end
  elseif state == 'sent' or state == 'cancelled' then  -- stored and done with already:
    redis.call('UNLINK', KEYS[3] .. id)  -- the MSET wrote its payload again
  end
  ids[#ids + 1] = owner
end
for key, list in pairs(lined_up) do
  for j = 1, #list, 1000 do redis.call('ZADD', key, unpack(list, j, math.min(j + 999, #list))) end
end
for field, n in pairs(delta) do redis.call('HINCRBY', KEYS[5], field, n) end
for tenant in pairs(audited) do redis.call('SADD', AUDIT .. 'tenants', tenant) end
apply_tenant_counts()
-- Critical mail ready now wakes the workers' express loops at once (channel "{p}:wake"),
-- instead of at their next poll.
if lined_up[KEYS[6]] then redis.call('PUBLISH', string.sub(KEYS[1], 1, -3) .. 'wake', '1') end
return ids
