-- Herald's cluster history: the READ script (see cluster_history.rs for its arguments and answer).
local p, uid, ttl, size = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local mk, sk = p .. ':hm:' .. uid, p .. ':hs:' .. uid
local ep = redis.call('HGET', mk, 'epoch')
if not ep then return {'', 0} end
local out = {ep, tonumber(redis.call('HGET', mk, 'top') or '0')}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, e in ipairs(redis.call('XRANGE', sk, '-', '+', 'COUNT', size)) do
  if tonumber(e[2][8]) + ttl > now then
    table.insert(out, tonumber(string.sub(e[1], 3)))
    table.insert(out, e[2][4])
    table.insert(out, e[2][2])
  end
end
return out
