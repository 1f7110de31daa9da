-- Herald's cluster history: the RECOVER script (see cluster_history.rs for its arguments and answer).
local p, me, ne = ARGV[1], ARGV[2], ARGV[3]
local ttl, mttl, maxb, size = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local kind, who, mode, ep, off = ARGV[8], ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12])
local uid, sid = who, ''
if kind == 'p' then
  local b = redis.call('GET', p .. ':hb:' .. who)
  if not b then return {0} end
  local i = string.find(b, '\n', 1, true)
  if not i then return {0} end
  local j = string.find(b, '\n', i + 1, true) or (#b + 1)
  uid = string.sub(b, 1, i - 1)
  sid = string.sub(b, i + 1, j - 1)
  redis.call('SADD', p .. ':u:' .. uid, me)
end
local mk, sk = p .. ':hm:' .. uid, p .. ':hs:' .. uid
local cur = redis.call('HGET', mk, 'epoch')
if not cur then
  cur = ne
  redis.call('DEL', sk)
  redis.call('HSET', mk, 'epoch', ne, 'top', 0, 'od', 0)
end
redis.call('EXPIRE', mk, mttl)
local top = tonumber(redis.call('HGET', mk, 'top'))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {1, uid, sid, cur, top, 'gone'}
if mode == 's' then
  if ep ~= cur then
    out[6] = 'foreign'
  elseif off == nil or off > top then
    out[6] = 'future'
  elseif off == top then
    out[6] = 'ok'
  else
    local es = redis.call('XRANGE', sk, '0-' .. (off + 1), '+', 'COUNT', size)
    if #es == top - off and es[1][1] == '0-' .. (off + 1) and tonumber(es[1][2][8]) + ttl > now then
      local bytes = 0
      for _, e in ipairs(es) do
        bytes = bytes + #e[2][2]
        if bytes > maxb then
          return {1, uid, sid, cur, top, 'big'}
        end
        table.insert(out, tonumber(string.sub(e[1], 3)))
        table.insert(out, e[2][4])
        table.insert(out, e[2][2])
      end
      out[6] = 'ok'
      local od = tonumber(redis.call('HGET', mk, 'od') or '0')
      if od < top then redis.call('HSET', mk, 'od', top) end
    end
  end
elseif mode == 'o' then
  local od = tonumber(redis.call('HGET', mk, 'od') or '0')
  local es = redis.call('XRANGE', sk, '0-' .. (od + 1), '+', 'COUNT', size)
  local last, bytes = od, 0
  for _, e in ipairs(es) do
    local f = e[2]
    if f[6] == '1' and tonumber(f[8]) + ttl > now then
      bytes = bytes + #f[2]
      if bytes > maxb then break end
      table.insert(out, tonumber(string.sub(e[1], 3)))
      table.insert(out, f[4])
      table.insert(out, f[2])
    end
    last = tonumber(string.sub(e[1], 3))
  end
  if last > od then redis.call('HSET', mk, 'od', last) end
  out[6] = 'ok'
end
return out
