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

# Session scripts: KEYS = meta, msgs [, index on a single Redis]; ARGV = now, ttl, cutoff, session id, ...
SESSION = (
    INDEX
    + """
local meta, msgs, idx = KEYS[1], KEYS[2], KEYS[3]
local now, ttl, cutoff, sid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local function later(a, b) if tonumber(a) >= tonumber(b) then return a end return b end
local function refresh(updated)
  for _, key in ipairs({meta, msgs}) do
    if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
  if idx then index(idx, sid, updated, ttl, cutoff, false) end
end
"""
)

# ARGV[5] = max messages (0 = all), ARGV[6..] = bodies from `encode_message`. Returns the first new id.
APPEND = (
    SESSION
    + """
local max = tonumber(ARGV[5])
local state = redis.call('HMGET', meta, 'next_id', 'updated_at')
local next_id, updated = tonumber(state[1]), now
if next_id then
  updated = later(state[2], now)
else
  next_id = 1
  redis.call('DEL', msgs)
  redis.call('HSET', meta, 'created_at', now, 'metadata', '{}', 'version', '0')
end
local count = #ARGV - 5
local batch = {}
for i = 1, count do
  batch[#batch + 1] = '{"id":' .. string.format('%d', next_id + i - 1) .. ',' .. string.sub(ARGV[5 + i], 2)
  if #batch == 1000 then redis.call('RPUSH', msgs, unpack(batch)); batch = {} end
end
if #batch > 0 then redis.call('RPUSH', msgs, unpack(batch)) end
if max > 0 then redis.call('LTRIM', msgs, -max, -1) end
redis.call('HSET', meta, 'next_id', string.format('%d', next_id + count), 'updated_at', updated)
redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
return next_id
"""
)

# ARGV[5] = created_at, ARGV[6] = metadata, ARGV[7] = version. Returns 1 if created, 0 if the id exists.
CREATE = (
    SESSION
    + """
if redis.call('EXISTS', meta) == 1 then return 0 end
redis.call('DEL', msgs)
redis.call('HSET', meta, 'created_at', ARGV[5], 'updated_at', now, 'metadata', ARGV[6], 'next_id', '1',
           'version', ARGV[7])
refresh(now)
return 1
"""
)

# Compare-and-set. ARGV[5] = the metadata `apply` saw, ARGV[6] = its result.
# Returns nil if the session is gone, 0 if the metadata changed meanwhile, else created_at, updated_at, version.
SET_METADATA = (
    SESSION
    + """
local current = redis.call('HGET', meta, 'metadata')
if not current then return false end
if current ~= ARGV[5] then return 0 end
local updated = later(redis.call('HGET', meta, 'updated_at'), now)
redis.call('HSET', meta, 'metadata', ARGV[6], 'updated_at', updated)
redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
return redis.call('HMGET', meta, 'created_at', 'updated_at', 'version')
"""
)

# Returns nil if the session is gone, else its new updated_at.
CLEAR = (
    SESSION
    + """
if redis.call('EXISTS', meta) == 0 then return false end
redis.call('DEL', msgs)
local updated = later(redis.call('HGET', meta, 'updated_at'), now)
redis.call('HSET', meta, 'updated_at', updated)
redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
return updated
"""
)

# KEYS = meta, msgs [, index]; ARGV = session id. Returns 1 if the session existed.
DELETE = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[1]) end
return existed
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
if lo >= hi then return {} end
return redis.call('LRANGE', KEYS[2], lo, hi - 1)
"""
