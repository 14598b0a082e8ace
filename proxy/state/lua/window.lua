-- units: amounts are integer counts (requests or tokens); buckets are integer indexes floor(t / (window / slots)); lease times are integer milliseconds; key ttls are milliseconds.
-- One call per request: first settles earlier requests (token corrections, lease releases), then
-- admits this one on every counter or on none. All KEYS share one hash tag (Redis Cluster).
-- KEYS: every counter touched, each once. A counter is a window (hash: bucket index -> amount,
--       plus n = live total, o = oldest live bucket, t = newest bucket) or a concurrency set
--       (sorted set: lease -> expiry ms).
-- ARGV[1] JSON: [lease of this request, slots (buckets per window), number of settles, entries...];
--         each entry starts with the index of its counter in KEYS. First the settles:
--         [k, "w", delta, charged bucket (string), current bucket (string), key ttl ms] or
--         [k, "c", 0, lease]; then the counters to charge: [k, "w", limit, cost, current bucket
--         (string), key ttl ms] or [k, "c", limit, cost, now ms, key ttl ms, lease expiry ms].
-- Returns {refused (1-based, 0: admitted), retry bucket, never (1: cost above limit), then used and
--          newest bucket per charged counter (after the charge when admitted, before it if refused)}.
-- Only what changes is written: a window's key ttl moves when a new newest bucket starts, and
-- expired leases are dropped when a concurrency set looks full.
local payload = cjson.decode(ARGV[1])
local lease, slots, offset = payload[1], payload[2], payload[3]
local first = 3 -- payload[first + i] is entry i
local count = #payload - first - offset

for i = 1, offset do
  local spec = payload[first + i]
  local key, kind, delta = KEYS[spec[1]], spec[2], spec[3]
  if kind == 'c' then
    redis.call('ZREM', key, spec[4])
  elseif delta ~= 0 then
    local charged, current = spec[4], tonumber(spec[5])
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
      redis.call('HINCRBY', key, spec[5], delta)
      redis.call('HINCRBY', key, 'n', delta)
      redis.call('HSETNX', key, 'o', spec[5])
      if current > (tonumber(redis.call('HGET', key, 't')) or 0) then
        redis.call('HSET', key, 't', spec[5])
      end
      redis.call('PEXPIRE', key, spec[6])
    end
  end
end

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

-- Drop the buckets that left the window; amortised O(1): usually none or one. Returns the live
-- total, the newest bucket and the oldest (nil when the key does not exist).
local function expire(key, current)
  local state = redis.call('HMGET', key, 'n', 'o', 't')
  local total, oldest, top = tonumber(state[1]) or 0, tonumber(state[2]), tonumber(state[3]) or 0
  local floor = current - slots
  if oldest == nil or oldest >= floor then return total, top, oldest end
  if top < floor then
    redis.call('DEL', key)
    return 0, 0, nil
  end
  if floor - oldest > slots + 1 then
    total, top = rebuild(key, floor)
    return total, top, floor
  end
  for index = oldest, floor - 1 do
    local amount = redis.call('HGET', key, index)
    if amount then
      total = total - tonumber(amount)
      redis.call('HDEL', key, index)
    end
  end
  redis.call('HSET', key, 'n', total, 'o', floor)
  return total, top, floor
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

local used, newest, oldests = {}, {}, {}
local refused, retry, never = 0, 0, 0

for i = 1, count do
  local spec = payload[first + offset + i]
  local key, kind, limit, cost, current = KEYS[spec[1]], spec[2], spec[3], spec[4], tonumber(spec[5])
  local total, top = 0, 0
  if kind == 'w' then
    total, top, oldests[i] = expire(key, current)
  else
    total = redis.call('ZCARD', key)
    if total + 1 > limit then
      -- full: only now is it worth dropping the leases of holders that stopped refreshing
      redis.call('ZREMRANGEBYSCORE', key, '-inf', current)
      total = redis.call('ZCARD', key)
    end
  end
  used[i], newest[i] = total, top
  if refused == 0 and total + cost > limit then
    refused = i
    if cost > limit then
      never = 1
    elseif kind == 'w' then
      retry = earliest_fit(key, current - slots, total + cost - limit)
    end
  end
end

if refused == 0 then
  for i = 1, count do
    local spec = payload[first + offset + i]
    local key, kind, cost, current = KEYS[spec[1]], spec[2], spec[4], spec[5]
    if kind == 'w' then
      if cost > 0 then
        redis.call('HINCRBY', key, current, cost)
        redis.call('HINCRBY', key, 'n', cost)
        if oldests[i] == nil then redis.call('HSET', key, 'o', current) end
        if tonumber(current) > newest[i] then
          -- a new newest bucket: the key must now outlive it (older ones expire before it)
          redis.call('HSET', key, 't', current)
          redis.call('PEXPIRE', key, spec[6])
          newest[i] = tonumber(current)
        end
        used[i] = used[i] + cost
      end
    else
      redis.call('ZADD', key, spec[7], lease)
      redis.call('PEXPIRE', key, spec[6])
      used[i] = used[i] + 1
    end
  end
end

local out = {refused, retry, never}
for i = 1, count do
  out[#out + 1] = used[i]
  out[#out + 1] = newest[i]
end
return out
