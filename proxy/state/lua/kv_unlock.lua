-- no time units: KEYS[1] lock key, ARGV[1] owner token; deletes the lock only for its owner, returns 1 if it did
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
