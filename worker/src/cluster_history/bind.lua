-- Herald's cluster history: the BIND script (see cluster_history.rs for its arguments and answer).
local p, pid, uid, sid, by, ended, win = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local k = p .. ':hb:' .. pid
local b = redis.call('GET', k)
if b then
  local i = string.find(b, '\n', 1, true) or (#b + 1)
  local j = string.find(b, '\n', i + 1, true) or #b
  if string.sub(b, 1, i - 1) ~= uid then return 0 end
  if ended == '1' and string.sub(b, j + 1) ~= by then return 0 end
end
redis.call('SET', k, uid .. '\n' .. sid .. '\n' .. by, 'EX', win)
return 1
