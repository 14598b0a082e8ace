-- units: amounts and caps in integer nano-USD (1e-9 USD); now and hold in seconds. Cap < 0: uncapped.
-- KEYS: spend hash, held hash, holds zset (score = expiry), holdinfo hash (id -> "amount\nkey\nkey...")
-- ARGV: now, hold id, amount, hold seconds, then key, cap pairs.
-- Returns {0, 0} when held on every key, else {index of the refusing key (1-based), its used}.
local now = tonumber(ARGV[1])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(lapsed) do
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
local amount = tonumber(ARGV[3])
local keys = {}
for i = 5, #ARGV, 2 do
  local key, cap = ARGV[i], tonumber(ARGV[i + 1])
  keys[#keys + 1] = key
  if cap >= 0 then
    local used = tonumber(redis.call('HGET', KEYS[1], key) or '0') +
                 tonumber(redis.call('HGET', KEYS[2], key) or '0')
    if used + amount > cap then return {#keys, used} end
  end
end
for _, key in ipairs(keys) do redis.call('HINCRBY', KEYS[2], key, ARGV[3]) end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3] .. '\n' .. table.concat(keys, '\n'))
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
return {0, 0}
