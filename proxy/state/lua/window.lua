-- units: amounts are integer counts (requests or tokens); buckets are integer indexes floor(t / (window / slots)); lease times are integer milliseconds; key ttls are milliseconds.
-- One call per request: first settles earlier requests (token corrections, lease releases), then
-- admits this one on every counter or on none. All KEYS share one hash tag (Redis Cluster).
-- KEYS: the settled counters, then the counters to charge. A counter is a window (hash: bucket
--       index -> amount, plus n = live total, o = oldest live bucket, t = newest bucket) or a
--       concurrency set (sorted set: lease -> expiry ms).
-- ARGV[1] lease of this request; ARGV[2] slots (buckets per window);
-- ARGV[3] JSON, one entry per counter to charge: [kind ("w" | "c"), limit, cost,
--         current (bucket index as a string | now ms), key ttl ms, lease expiry ms (concurrency)];
-- ARGV[4] JSON, one entry per settled counter: ["w", delta, charged bucket (string),
--         current bucket (string), key ttl ms] or ["c", 0, lease].
-- Returns {refused (1-based, 0: admitted), retry bucket, never (1: cost above limit), then used and
--          newest bucket per charged counter (after the charge when admitted, before it if refused)}.
local lease = ARGV[1]
local slots = tonumber(ARGV[2])
local settles = cjson.decode(ARGV[4])
local offset = #settles

for i = 1, offset do
  local spec = settles[i]
  local kind, delta = spec[1], spec[2]
  local key = KEYS[i]
  if kind == 'c' then
    redis.call('ZREM', key, spec[3])
  elseif delta ~= 0 then
    local charged, current = spec[3], tonumber(spec[4])
    local amount = tonumber(redis.call('HGET', key, charged) or '0')
    if tonumber(charged) >= current - slots and amount > 0 then
      -- the correction belongs to the bucket of the original charge, so it expires with it
      local change = math.max(delta, -amount)
      if amount + change == 0 then
        redis.call('HDEL', key, charged)
      else
        redis.call('HINCRBY', key, charged, change)
      end
      redis.call('HINCRBY', key, 'n', change)
    elseif delta > 0 then
      -- the charge already left the window: count the extra usage from now
      redis.call('HINCRBY', key, spec[4], delta)
      redis.call('HINCRBY', key, 'n', delta)
      redis.call('HSETNX', key, 'o', spec[4])
      if current > (tonumber(redis.call('HGET', key, 't')) or 0) then
        redis.call('HSET', key, 't', spec[4])
      end
      redis.call('PEXPIRE', key, spec[5])
    end
  end
end

local specs = cjson.decode(ARGV[3])
local used, newest = {}, {}
local refused, retry, never = 0, 0, 0

-- Recount a window from scratch: after a long idle gap, cheaper than walking every empty bucket.
local function rebuild(key, floor)
  local fields = redis.call('HGETALL', key)
  local total, oldest, top, stale = 0, nil, 0, {}
  for f = 1, #fields, 2 do
    local index = tonumber(fields[f])
    if index then
      if index < floor then
        stale[#stale + 1] = fields[f]
      else
        total = total + tonumber(fields[f + 1])
        if oldest == nil or index < oldest then oldest = index end
        if index > top then top = index end
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  redis.call('HSET', key, 'n', total, 'o', oldest or floor, 't', top)
  return total, top
end

-- Drop the buckets that left the window; amortised O(1): usually none or one.
local function expire(key, current)
  local state = redis.call('HMGET', key, 'n', 'o', 't')
  local total, oldest, top = tonumber(state[1]) or 0, tonumber(state[2]), tonumber(state[3]) or 0
  local floor = current - slots
  if oldest == nil or oldest >= floor then return total, top end
  if top < floor then
    redis.call('DEL', key)
    return 0, 0
  end
  if floor - oldest > slots + 1 then return rebuild(key, floor) end
  for index = oldest, floor - 1 do
    local amount = redis.call('HGET', key, index)
    if amount then
      total = total - tonumber(amount)
      redis.call('HDEL', key, index)
    end
  end
  redis.call('HSET', key, 'n', total, 'o', floor)
  return total, top
end

local function earliest_fit(key, floor, need)
  local fields = redis.call('HGETALL', key)
  local live = {}
  for f = 1, #fields, 2 do
    local index = tonumber(fields[f])
    if index and index >= floor then live[#live + 1] = {index, tonumber(fields[f + 1])} end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, bucket in ipairs(live) do
    freed = freed + bucket[2]
    if freed >= need then return bucket[1] end
  end
  return 0
end

for i = 1, #specs do
  local spec = specs[i]
  local kind, limit, cost, current = spec[1], spec[2], spec[3], tonumber(spec[4])
  local total, top = 0, 0
  if kind == 'w' then
    total, top = expire(KEYS[offset + i], current)
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[offset + i], '-inf', current)
    total = redis.call('ZCARD', KEYS[offset + i])
  end
  used[i], newest[i] = total, top
  if refused == 0 and total + cost > limit then
    refused = i
    if cost > limit then
      never = 1
    elseif kind == 'w' then
      retry = earliest_fit(KEYS[offset + i], current - slots, total + cost - limit)
    end
  end
end

if refused == 0 then
  for i = 1, #specs do
    local spec = specs[i]
    local kind, cost, current = spec[1], spec[3], spec[4]
    if kind == 'w' then
      if cost > 0 then
        redis.call('HINCRBY', KEYS[offset + i], current, cost)
        redis.call('HINCRBY', KEYS[offset + i], 'n', cost)
        redis.call('HSETNX', KEYS[offset + i], 'o', current)
        if tonumber(current) > newest[i] then redis.call('HSET', KEYS[offset + i], 't', current) end
        redis.call('PEXPIRE', KEYS[offset + i], spec[5])
        used[i] = used[i] + cost
        newest[i] = math.max(newest[i], tonumber(current))
      end
    else
      redis.call('ZADD', KEYS[offset + i], spec[6], lease)
      redis.call('PEXPIRE', KEYS[offset + i], spec[5])
      used[i] = used[i] + 1
    end
  end
end

local out = {refused, retry, never}
for i = 1, #specs do
  out[#out + 1] = used[i]
  out[#out + 1] = newest[i]
end
return out
