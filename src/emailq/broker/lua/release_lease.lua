-- Give a named lease up, if this holder holds it.
-- KEYS[1]     the lease's key, a string "holder|expires at"
-- ARGV[1]     the holder
-- Returns     1 when it was released, 0 when the holder did not hold it.
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
