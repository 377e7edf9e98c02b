#!lua flags=allow-oom
-- Erase an address (GDPR art. 17): every message its recipient index names (of one tenant,
-- or of all) is cancelled when it waits unleased, and loses its payload, its envelope
-- recipients and its idempotency key; each such message gets an "erased" event holding only
-- the address's keyed hash. Idempotent: what is erased is not found again.
-- KEYS[1]     message key prefix "{p}:m:" (a message is the hash KEYS[1] .. id)
-- KEYS[2]     payload key prefix "{p}:p:"
-- KEYS[3]     idempotency key prefix "{p}:idem:" (+ tenant .. "\31" .. key)
-- KEYS[4]     delayed zset (due time → id)
-- KEYS[5]     counts hash ("lane:state" → n)
-- KEYS[6]     final zset (finished at → "lane:state:id:tenant")
-- KEYS[7..11] ready zsets, one per lane, in the order of the lane names below
-- KEYS[12]    the recipient's index set "{p}:r:<hash>" (its message ids)
-- KEYS[13]    audit prefix "{p}:a:" or "{p}:a-off" (prelude.lua)
-- KEYS[14]    tenant counts hash ("tenant\31lane:state" → n)
-- ARGV[1]     now, or "" for the server's clock
-- ARGV[2]     the recipient's keyed hash (for the erased events)
-- ARGV[3]     only this tenant's messages, or "" for every tenant's
-- ARGV[4]     retention in ms (the Redis TTL of a cancelled message)
-- ARGV[5..9]  lane names
-- Returns     {messages, cancelled, in_flight, erased, idempotency keys removed}
local ready = {}
for i = 1, 5 do ready[ARGV[4 + i]] = KEYS[6 + i] end
local now = clock(ARGV[1])
local counts = {0, 0, 0, 0, 0}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[12])) do
  local msg = KEYS[1] .. id
  local f = redis.call('HMGET', msg, 'state', 'lane', 'tenant', 'idem', 'rcpt')
  local state, lane, tenant, idem = f[1], f[2], f[3], f[4]
  if not state then
    redis.call('SREM', KEYS[12], id)  -- purged already: nothing left to erase
  elseif ARGV[3] == '' or tenant == ARGV[3] then
    counts[1] = counts[1] + 1
    if state == 'queued' or state == 'scheduled' or state == 'retrying' then
      if state == 'queued' then
        redis.call('ZREM', ready[lane], id)
        tenant_ready_leave(tenant, lane, id)
      else
        redis.call('ZREM', KEYS[4], id)
      end
      redis.call('HSET', msg, 'state', 'cancelled', 'updated_at', now)
      redis.call('ZADD', KEYS[6], ms(now), final_member(lane, 'cancelled', id, tenant))
      redis.call('PEXPIRE', msg, ARGV[4])
      redis.call('HINCRBY', KEYS[5], lane .. ':' .. state, -1)
      redis.call('HINCRBY', KEYS[5], lane .. ':cancelled', 1)
      tenant_count(tenant, lane, state, -1)
      tenant_count(tenant, lane, 'cancelled', 1)
      audit(id, event(now, 'cancelled'))
      counts[2] = counts[2] + 1
    elseif state == 'leased' then
      counts[3] = counts[3] + 1
    end
    if idem then
      local scope = KEYS[3] .. tenant .. '\31' .. idem
      local held = redis.call('GET', scope)
      if held and string.sub(held, 1, #id + 1) == id .. '|' then
        redis.call('UNLINK', scope)
        counts[5] = counts[5] + 1
      end
    end
    local had_payload = redis.call('UNLINK', KEYS[2] .. id)
    if had_payload > 0 or idem or f[5] then
      redis.call('HDEL', msg, 'idem', 'rcpt')
      audit(id, event(now, 'erased', member('rcpt', ARGV[2])))
      counts[4] = counts[4] + 1
    end
  end
end
apply_tenant_counts()
return counts
