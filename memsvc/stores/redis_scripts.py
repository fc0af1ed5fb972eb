"""The Lua scripts of the Redis store, one atomic step each (see `memsvc.stores.redis` for the layout).

Times, ids and scores travel as decimal strings: Lua numbers are doubles that Redis would format with
14 significant digits, which is too few for microseconds since the epoch.
"""

INDEX_GRACE_SECONDS = 60
"""How much longer than the TTL index entries and the index key live: a margin for clock skew."""


INDEX = f"""
local function index(key, member, score, ttl, cutoff, gt)
  if gt then redis.call('ZADD', key, 'GT', score, member) else redis.call('ZADD', key, score, member) end
  if ttl > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
    redis.call('EXPIRE', key, ttl + {INDEX_GRACE_SECONDS})
  else
    redis.call('PERSIST', key)
  end
end
"""

# Session scripts: KEYS = meta, msgs, idempotency record [, index on a single Redis];
# ARGV = now, ttl, cutoff, session id, expected version ('' none, '*' any, or the number), idempotency
# fingerprint ('' none), idempotency TTL, then the script's own. Each answers a table led by a status:
# 'ok' …, 'replay' <recorded result>, 'reused' (same key, other request), 'stale' <current version or ''>,
# 'gone' (no such session), 'exists' (create of a taken id), 'changed' (compare-and-set lost a race).
SESSION = (
    INDEX
    + """
local meta, msgs, idem, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, ttl, cutoff, sid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local expected, fingerprint, idem_ttl = ARGV[5], ARGV[6], tonumber(ARGV[7])
local function later(a, b) if tonumber(a) >= tonumber(b) then return a end return b end
local function refresh(updated)
  for _, key in ipairs({meta, msgs}) do
    if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
  if idx then index(idx, sid, updated, ttl, cutoff, false) end
end
local function recorded()  -- the answer recorded for this Idempotency-Key, if any
  if fingerprint == '' then return nil end
  local found = redis.call('HMGET', idem, 'fingerprint', 'result')
  if not found[1] then return nil end
  if found[1] ~= fingerprint then return {'reused'} end
  return {'replay', found[2]}
end
local function record(result)
  if fingerprint ~= '' then
    redis.call('HSET', idem, 'fingerprint', fingerprint, 'result', result)
    redis.call('EXPIRE', idem, idem_ttl)
  end
end
local function stale(version)  -- nil when the If-Match holds (or there is none)
  if expected == '' then return nil end
  if not version then return {'stale', ''} end
  if expected ~= '*' and version ~= expected then return {'stale', version} end
  return nil
end
"""
)

# ARGV[8] = max messages (0 = all), ARGV[9] = '1' to refuse an append past it ('full') instead of trimming,
# ARGV[10] = max sessions of the tenant (0 = none; checked here on a single Redis), ARGV[11..] = bodies from
# `encode_message`. 'ok', first new id, new version; or 'full', 'limit'. The recorded result: the version, then
# the stored messages, one a line.
APPEND = (
    SESSION
    + """
local answer = recorded()
if answer then return answer end
local max = tonumber(ARGV[8])
local count = #ARGV - 10
local state = redis.call('HMGET', meta, 'next_id', 'updated_at', 'version')
answer = stale(state[3])
if answer then return answer end
local next_id, updated = tonumber(state[1]), now
if next_id then
  updated = later(state[2], now)
  if ARGV[9] == '1' and max > 0 and redis.call('LLEN', msgs) + count > max then return {'full'} end
else
  if ARGV[9] == '1' and max > 0 and count > max then return {'full'} end
  if idx and tonumber(ARGV[10]) > 0 and redis.call('ZCARD', idx) >= tonumber(ARGV[10]) then return {'limit'} end
  next_id = 1
  redis.call('DEL', msgs)
  redis.call('HSET', meta, 'created_at', now, 'metadata', '{}', 'version', '0')
end
local batch, stored = {}, {}
for i = 1, count do
  local message = '{"id":' .. string.format('%d', next_id + i - 1) .. ',' .. string.sub(ARGV[10 + i], 2)
  batch[#batch + 1] = message
  if fingerprint ~= '' then stored[i] = message end
  if #batch == 1000 then redis.call('RPUSH', msgs, unpack(batch)); batch = {} end
end
if #batch > 0 then redis.call('RPUSH', msgs, unpack(batch)) end
if max > 0 then redis.call('LTRIM', msgs, -max, -1) end
redis.call('HSET', meta, 'next_id', string.format('%d', next_id + count), 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
record(version .. '\\n' .. table.concat(stored, '\\n'))
return {'ok', next_id, version}
"""
)

# ARGV[8] = created_at, ARGV[9] = metadata, ARGV[10] = version, ARGV[11] = max sessions of the tenant (0 = none).
# 'ok', 'exists' or 'limit'. The recorded result: created_at, then the metadata, on two lines.
CREATE = (
    SESSION
    + """
local answer = recorded()
if answer then return answer end
if redis.call('EXISTS', meta) == 1 then return {'exists'} end
if idx and tonumber(ARGV[11]) > 0 and redis.call('ZCARD', idx) >= tonumber(ARGV[11]) then return {'limit'} end
redis.call('DEL', msgs)
redis.call('HSET', meta, 'created_at', ARGV[8], 'updated_at', now, 'metadata', ARGV[9], 'next_id', '1',
           'version', ARGV[10])
refresh(now)
record(ARGV[8] .. '\\n' .. ARGV[9])
return {'ok'}
"""
)

# Compare-and-set. ARGV[8] = the metadata `apply` saw, ARGV[9] = its result.
# 'ok', created_at, updated_at, version; or 'gone', 'stale', 'changed' (the metadata changed meanwhile).
SET_METADATA = (
    SESSION
    + """
local state = redis.call('HMGET', meta, 'metadata', 'version', 'updated_at', 'created_at')
if not state[1] then return {'gone'} end
local answer = stale(state[2])
if answer then return answer end
if state[1] ~= ARGV[8] then return {'changed'} end
local updated = later(state[3], now)
redis.call('HSET', meta, 'metadata', ARGV[9], 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
return {'ok', state[4], updated, version}
"""
)

# 'ok', updated_at, version; or 'gone', 'stale'.
CLEAR = (
    SESSION
    + """
local state = redis.call('HMGET', meta, 'version', 'updated_at')
if not state[1] then return {'gone'} end
local answer = stale(state[1])
if answer then return answer end
redis.call('DEL', msgs)
local updated = later(state[2], now)
redis.call('HSET', meta, 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
return {'ok', updated, version}
"""
)

# KEYS = meta, msgs [, index]; ARGV = session id, expected version ('' none, '*' any, or the number).
# 'ok', 'gone' or 'stale' <current version>.
DELETE = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return {'gone'} end
if ARGV[2] ~= '' and ARGV[2] ~= '*' and ARGV[2] ~= version then return {'stale', version} end
redis.call('DEL', KEYS[1], KEYS[2])
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[1]) end
return {'ok'}
"""

# Cluster only. KEYS = index; ARGV = session id, score, ttl, cutoff.
TOUCH_INDEX = (
    INDEX
    + """
index(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], true)
return 1
"""
)

# KEYS = index; ARGV = id, score, id, score, ... Removes each entry that still has the score it was seen with.
REMOVE_STALE = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""

# KEYS = meta, msgs. Returns nil if the session is gone, else {{created_at, updated_at, metadata, version}, messages}.
GET_SESSION = """
local record = redis.call('HMGET', KEYS[1], 'created_at', 'updated_at', 'metadata', 'version')
if not record[1] then return false end
return {record, redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS = meta, msgs; ARGV = limit, before, after ('' = not given). Same arithmetic as the memory store.
# Returns the messages (false: no session). Not joined into one JSON array here: a Lua string of the 20 messages
# cost redis-server 35 µs more CPU per read than returning them (60 against 25 µs, measured under `make bench`),
# for 3 µs saved in memsvc.
GET_MESSAGES = """
local next_id = redis.call('HGET', KEYS[1], 'next_id')
if not next_id then return false end
local count = redis.call('LLEN', KEYS[2])
local first = tonumber(next_id) - count
local limit, before, after = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lo, hi = 0, count
if after then lo = math.min(math.max(after + 1 - first, 0), count) end
if before then hi = math.min(math.max(before - first, 0), count) end
if limit and hi - lo > limit then
  if after then hi = lo + limit else lo = hi - limit end
end
if lo >= hi then return {} end  -- (LRANGE 0 -1 would be all of them)
return redis.call('LRANGE', KEYS[2], lo, hi - 1)
"""
