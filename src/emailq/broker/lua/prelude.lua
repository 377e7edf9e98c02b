-- Shared by every script: loaded in front of each one's body (broker/redis.py), so the
-- helpers below are defined once. Only the tenant helpers touch keys: the last one given and
-- the tenant ready zsets beside it.
local function ms(t) return math.floor(tonumber(t) * 1000 + 0.5) end  -- zset scores: ms
-- Time is the broker's: ARGV[1] is an injected clock's (tests), or "" for Redis's own TIME,
-- the one clock every worker on every machine shares.
local function clock(given)
  if given ~= '' then return given end
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local function fmt(t) return string.format('%.17g', t) end  -- a computed time, exactly
-- A duration for people, and a burial's error: as emailq.broker.expiry.span() and gave_up().
local function span(s)
  if s < 0 then s = 0 end
  if s < 120 then return string.format('%.0f seconds', s) end
  if s < 7200 then return string.format('%.0f minutes', s / 60) end
  if s < 172800 then return string.format('%.1f hours', s / 3600) end
  return string.format('%.1f days', s / 86400)
end
local function gave_up(attempts, age, err)
  local text = 'gave up after ' .. attempts .. ' attempt'
  if attempts ~= 1 then text = text .. 's' end
  text = text .. ' over ' .. span(age)
  if err ~= '' then text = text .. ': ' .. err end
  return text
end
-- Counts per tenant: "tenant\31lane:state" → n in the hash each script that moves messages
-- is given as its last key, beside the "lane:state" counts. Gathered per script, applied once.
local tenant_delta = {}
local function tenant_count(tenant, lane, state, n)
  if not tenant or tenant == '' then return end
  local field = tenant .. '\31' .. lane .. ':' .. state
  tenant_delta[field] = (tenant_delta[field] or 0) + n
end
-- Each tenant's ready mail per lane, "{p}:tready:<tenant>\31<lane>" (beside that last key):
-- ready since (ms) → id, in step with the lane's ready zset, so a tenant's oldest waiting
-- age is its head (Broker.stats(tenant)), never a scan of the lane. Entries join at once;
-- those leaving are gathered and removed by apply_tenant_counts.
local tenant_ready_gone = {}
local function tenant_ready_key(tenant, lane)
  return string.sub(KEYS[#KEYS], 1, -8) .. 'tready:' .. tenant .. '\31' .. lane  -- -"tcounts"
end
local function tenant_ready_join(tenant, lane, score, id)
  if not tenant or tenant == '' then return end
  redis.call('ZADD', tenant_ready_key(tenant, lane), score, id)
end
local function tenant_ready_leave(tenant, lane, id)
  if not tenant or tenant == '' then return end
  local key = tenant_ready_key(tenant, lane)
  local ids = tenant_ready_gone[key]
  if not ids then ids = {}; tenant_ready_gone[key] = ids end
  ids[#ids + 1] = id
end
local function apply_tenant_counts()
  for field, d in pairs(tenant_delta) do
    if d ~= 0 then redis.call('HINCRBY', KEYS[#KEYS], field, d) end
  end
  for key, ids in pairs(tenant_ready_gone) do
    for j = 1, #ids, 1000 do redis.call('ZREM', key, unpack(ids, j, math.min(j + 999, #ids))) end
  end
end
-- A final zset member: "lane:state:id:tenant" (ids hold no ":"; members written before tenant
-- counts have no tenant part).
local function final_member(lane, state, id, tenant)
  return lane .. ':' .. state .. ':' .. id .. ':' .. (tenant or '')
end
-- The audit trail (emailq.privacy.audit): scripts that change a message's state are given
-- the audit prefix "{p}:a:" as their last key but one (a message's events are the list
-- prefix .. id, each a JSON object), or "{p}:a-off" when the trail is not written. Events
-- are pushed by the same call that changes the state: no round trip of their own.
local AUDIT = KEYS[#KEYS - 1] or ''
local AUDITING = string.sub(AUDIT, -3) == ':a:'
local function event(at, kind, extra)  -- extra: '' or ',"name":value…' (JSON members)
  return '{"at":' .. at .. ',"kind":"' .. kind .. '"' .. (extra or '') .. '}'
end
-- Outcome events (FEED_KINDS, as emailq.privacy.audit.FEED_KINDS) also go to the feed, the
-- stream "{p}:a:feed" (m: id, e: the event) that webhooks read in order
-- (Broker.events_after); capped near FEED_MAX entries, the oldest dropped: a webhook
-- dispatcher that falls that far behind misses those. One XADD per message outcome, not per
-- event: accepted, leased and attempt events are not fed.
local FEED_MAX = '1000000'
local FEED_KINDS = {sent = true, retried = true, dead = true, cancelled = true}
local function audit(id, ...)
  if not AUDITING then return end
  redis.call('RPUSH', AUDIT .. id, ...)
  for i = 1, select('#', ...) do
    local e = select(i, ...)
    if FEED_KINDS[string.match(e, '"kind":"(%a+)"')] then
      redis.call('XADD', AUDIT .. 'feed', 'MAXLEN', '~', FEED_MAX, '*', 'm', id, 'e', e)
    end
  end
end
local function member(name, value)  -- one JSON member, the value quoted as JSON needs
  return ',"' .. name .. '":' .. cjson.encode(value)
end
-- A dead message's payload: dropped now ("0"), or kept for a while (ms).
local function expire_dead_payload(key, ttl)
  if ttl == '0' then redis.call('UNLINK', key) else redis.call('PEXPIRE', key, ttl) end
end
