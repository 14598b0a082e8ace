-- units: amounts in integer nano-USD (1e-9 USD).
-- KEYS: spend hash, held hash, holds zset, holdinfo hash (as ledger_reserve.lua)
-- ARGV: hold id ("" when nothing was held), actual amount, then the keys to charge.
-- Releases the hold if it has not lapsed; returns the new settled total of each charged key.
local id = ARGV[1]
if id ~= '' then
  local info = redis.call('HGET', KEYS[4], id)
  if info then
    local parts = {}
    for part in string.gmatch(info, '[^\n]+') do parts[#parts + 1] = part end
    if parts[1] ~= '0' then
      for i = 2, #parts do
        if redis.call('HINCRBY', KEYS[2], parts[i], '-' .. parts[1]) <= 0 then
          redis.call('HDEL', KEYS[2], parts[i])
        end
      end
    end
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
local totals = {}
for i = 3, #ARGV do
  totals[#totals + 1] = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[2])
end
return totals
