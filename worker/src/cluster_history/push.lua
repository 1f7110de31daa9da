-- Herald's cluster history: the PUSH script (see cluster_history.rs for its arguments and answer).
local p, me, id, ne = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local size, ttl, mttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local bin, data, tok = ARGV[8], ARGV[9], ARGV[10]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per, order, alive = {}, {}, {}
for i = 11, #ARGV do
  local u = ARGV[i]
  local mk, sk, uk = p .. ':hm:' .. u, p .. ':hs:' .. u, p .. ':u:' .. u
  if tok == '' or redis.call('SET', p .. ':hd:' .. tok .. ':' .. u, 1, 'NX', 'PX', 60000) then
    local ep = redis.call('HGET', mk, 'epoch')
    if not ep then
      ep = ne
      redis.call('DEL', sk)
      redis.call('HSET', mk, 'epoch', ne, 'top', 0, 'od', 0)
    end
    local top = redis.call('HINCRBY', mk, 'top', 1)
    local online = false
    for _, m in ipairs(redis.call('SMEMBERS', uk)) do
      if alive[m] == nil then
        alive[m] = redis.call('EXISTS', p .. ':alive:' .. m) == 1
      end
      if alive[m] then
        online = true
        if not per[m] then
          per[m] = {}
          table.insert(order, m)
        end
        table.insert(per[m], #u .. ' ' .. u .. ' ' .. ep .. ' ' .. top)
      else
        redis.call('SREM', uk, m)
      end
    end
    local o = '1'
    if online then o = '0' end
    redis.call('XADD', sk, 'MAXLEN', size, '0-' .. top, 'd', data, 'b', bin, 'o', o, 't', now)
    redis.call('PEXPIRE', sk, ttl)
    redis.call('EXPIRE', mk, mttl)
  end
end
local n = 0
for _, m in ipairs(order) do
  local env = '(' .. me .. '\n' .. id .. '\n' .. bin .. '\n' .. table.concat(per[m], '\n') .. '\n\n' .. data
  n = n + redis.call('PUBLISH', p .. ':m:' .. m, env)
end
return n
