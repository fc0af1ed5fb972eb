"""The Lua scripts of the Redis store, one atomic step each (see `memsvc.stores.redis` for the layout), each declared
with its named KEYS and ARGV (`redis_lua`).

Times, ids and scores travel as decimal strings: Lua numbers are doubles that Redis would format with
14 significant digits, which is too few for microseconds since the epoch.
"""

from memsvc.stores.redis_index import INDEX
from memsvc.stores.redis_lua import Prefix, Script

# Wakes the requests that wait on the session (`memsvc.events`): publishes `kind data` to the session's channel,
# `{p}:{<tenant>/<id>}:events`, made from the meta key (same hash tag, so on Cluster the shard channel is in the
# script's slot). SPUBLISH from Redis 7.0 on, PUBLISH before (where SPUBLISH is an unknown command).
NOTIFY = """
local function notify(kind, data)
  local channel = string.sub(meta, 1, -5) .. 'events'
  local payload = data and (kind .. ' ' .. data) or kind
  local sent = redis.pcall('SPUBLISH', channel, payload)
  if type(sent) == 'table' and sent.err then redis.call('PUBLISH', channel, payload) end
end
"""

# The session scripts. `sessions` is the tenant's listing, given on a single Redis only (on Cluster it and the
# metadata index are in another slot, `redis_index`). `expected` is the If-Match version: '' none, '*' any, or the
# number; `fingerprint` '' when there is no Idempotency-Key. Each answers a table led by a status: 'ok' …,
# 'replay' <recorded result>, 'reused' (same key, other request), 'stale' <current version or ''>, 'gone' (no such
# session), 'exists' (create of a taken id), 'changed' (compare-and-set lost a race).
SESSION = Prefix(
    'session',
    INDEX,
    NOTIFY,
    """
ttl, idem_ttl = tonumber(ttl), tonumber(idem_ttl)
local function later(a, b) if tonumber(a) >= tonumber(b) then return a end return b end
local function refresh(updated)
  for _, key in ipairs({meta, msgs, counts, summary}) do
    if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
  if sessions then index(session_id, updated, ttl, cutoff, false) end
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
    redis.call('SADD', idems, idem)  -- what an erasure deletes; it lives as long as its longest-lived record
    if redis.call('TTL', idems) < idem_ttl then redis.call('EXPIRE', idems, idem_ttl) end
  end
end
local function stale(version)  -- nil when the If-Match holds (or there is none)
  if expected == '' then return nil end
  if not version then return {'stale', ''} end
  if expected ~= '*' and version ~= expected then return {'stale', version} end
  return nil
end
""",
    keys=('meta', 'msgs', 'counts', 'summary', 'idem', 'idems', 'sessions?'),
    args=('now', 'ttl', 'cutoff', 'session_id', 'expected', 'fingerprint', 'idem_ttl'),
)

# A session's gaps (`memsvc.stores.gaps`, whose text form `meta.gaps` holds, absent when there are none): the ids
# between the first stored message and next_id that are not stored. The first id is derived, never stored:
# next_id - LLEN(msgs) - missing(gaps).
GAPS = """
local function gaps_of(text)
  local list = {}
  if text then
    for start, stop in string.gmatch(text, '(%d+):(%d+)') do list[#list + 1] = {tonumber(start), tonumber(stop)} end
  end
  return list
end
local function missing(list)
  local total = 0
  for _, gap in ipairs(list) do total = total + gap[2] - gap[1] end
  return total
end
-- How many stored ids are below x (the position of x, when it is stored).
local function stored_below(list, first, next_id, x)
  if x <= first then return 0 end
  if x > next_id then x = next_id end
  local below = x - first
  for _, gap in ipairs(list) do
    if gap[1] >= x then break end
    below = below - (math.min(gap[2], x) - gap[1])
  end
  return below
end
local function holds(list, first, next_id, x)
  if x < first or x >= next_id then return false end
  for _, gap in ipairs(list) do if gap[1] <= x and x < gap[2] then return false end end
  return true
end
local function save_gaps(list)
  if #list == 0 then redis.call('HDEL', meta, 'gaps') return end
  local parts = {}
  for i, gap in ipairs(list) do parts[i] = string.format('%d:%d', gap[1], gap[2]) end
  redis.call('HSET', meta, 'gaps', table.concat(parts, ','))
end
"""

# For the scripts that may create a session: false when one more would pass the tenant's limit, `max_sessions`
# (0 = none). Only a single Redis checks it here; on Cluster the index is in another slot.
ROOM = """
local function room()
  return not (sessions and tonumber(max_sessions) > 0 and redis.call('ZCARD', sessions) >= tonumber(max_sessions))
end
"""

# The kind of the message at `position` (0-based) in `msgs`, as trimming needs it: 2 for a tool message, from its
# record in `counts` (aligned with the end of `msgs`: messages stored before records were have none) or, when it
# has none, from its role, which `encode_message` puts right after the id. A record's kind is its value mod 4,
# read from its last two digits (exact, whatever the size of the number).
TRIM = """
local function kind(position, offset)
  local value = position >= offset and redis.call('LINDEX', counts, position - offset)
  if value and value ~= '0' then return tonumber(string.sub(value, -2)) % 4 end
  local message = redis.call('LINDEX', msgs, position)
  local comma = string.find(message, ',', 1, true)
  if string.sub(message, comma + 1, comma + 13) == '"role":"tool"' then return 2 end
  return 0
end
-- Trims the oldest messages down to `max` (and their records), and the tool messages right after the cut with
-- them, so that the session never starts with a tool message whose call went. True when it cut.
local function trim(max)
  local held = redis.call('LLEN', msgs)
  if held <= max then return end
  local offset = held - redis.call('LLEN', counts)
  local cut = held - max
  while cut < held and kind(cut, offset) == 2 do cut = cut + 1 end
  redis.call('LTRIM', msgs, cut, -1)
  redis.call('LTRIM', counts, math.max(cut - offset, 0), -1)
  return true
end
"""

# `max_messages` 0 = all; `reject_full` '1' refuses an append past it ('full') instead of trimming;
# `bodies` from `encode_message`, then as many records (decimal). 'ok', first new id, new version;
# or 'full', 'limit'. The recorded result: the version, then the stored messages, one a line.
APPEND = Script(
    'append',
    ROOM,
    TRIM,
    GAPS,
    """
local answer = recorded()
if answer then return answer end
local max = tonumber(max_messages)
local count = (#ARGV - bodies_from + 1) / 2
local state = redis.call('HMGET', meta, 'next_id', 'updated_at', 'version', 'gaps')
answer = stale(state[3])
if answer then return answer end
local next_id, updated = tonumber(state[1]), now
if next_id then
  updated = later(state[2], now)
  if reject_full == '1' and max > 0 and redis.call('LLEN', msgs) + count > max then return {'full'} end
else
  if reject_full == '1' and max > 0 and count > max then return {'full'} end
  if not room() then return {'limit'} end
  next_id = 1
  redis.call('DEL', msgs, counts, summary)
  redis.call('HSET', meta, 'created_at', now, 'metadata', '{}', 'version', '0')
end
local batch, stored = {}, {}
for i = 1, count do
  local body = ARGV[bodies_from + i - 1]
  local message = '{"id":' .. string.format('%d', next_id + i - 1) .. ',' .. string.sub(body, 2)
  batch[#batch + 1] = message
  if fingerprint ~= '' then stored[i] = message end
  if #batch == 1000 then redis.call('RPUSH', msgs, unpack(batch)); batch = {} end
end
if #batch > 0 then redis.call('RPUSH', msgs, unpack(batch)) end
for from = bodies_from + count, #ARGV, 1000 do
  redis.call('RPUSH', counts, unpack(ARGV, from, math.min(from + 999, #ARGV)))
end
if max > 0 and trim(max) and state[4] then  -- the gaps below the new first message go
  local head, kept = redis.call('LINDEX', msgs, 0), {}
  local first = head and tonumber(string.match(head, '^{"id":(%d+),')) or next_id + count
  for _, gap in ipairs(gaps_of(state[4])) do if gap[1] > first then kept[#kept + 1] = gap end end
  save_gaps(kept)
end
redis.call('HSET', meta, 'next_id', string.format('%d', next_id + count), 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
record(version .. '\\n' .. table.concat(stored, '\\n'))
notify('message', string.format('%d', next_id + count - 1))
return {'ok', next_id, version}
""",
    prefix=SESSION,
    args=('max_messages', 'reject_full', 'max_sessions', '*bodies'),
)

# `entries`: the metadata index's sets the session joins (`redis_index`), one a line.
# 'ok', 'exists' or 'limit'. The recorded result: created_at, then the metadata, on two lines.
CREATE = Script(
    'create',
    ROOM,
    """
local answer = recorded()
if answer then return answer end
if redis.call('EXISTS', meta) == 1 then return {'exists'} end
if not room() then return {'limit'} end
redis.call('DEL', msgs, counts, summary)
redis.call('HSET', meta, 'created_at', created_at, 'updated_at', now, 'metadata', metadata, 'next_id', '1',
           'version', version)
if sessions then change_sets(session_id, entries, '', true, now, ttl) end
refresh(now)
record(created_at .. '\\n' .. metadata)
return {'ok'}
""",
    prefix=SESSION,
    args=('created_at', 'metadata', 'version', 'max_sessions', 'entries'),
)

# Compare-and-set: `seen` is the metadata `apply` saw, `new` its result, `entries` the index sets of `new` (one a
# line; a single Redis moves the session between sets here).
# 'ok', created_at, updated_at, version, forked_from ('' when none); or 'gone', 'stale', 'changed' (the metadata
# changed meanwhile).
SET_METADATA = Script(
    'set_metadata',
    """
local state = redis.call('HMGET', meta, 'metadata', 'version', 'updated_at', 'created_at', 'forked_from')
if not state[1] then return {'gone'} end
local answer = stale(state[2])
if answer then return answer end
if state[1] ~= seen then return {'changed'} end
local updated = later(state[3], now)
redis.call('HSET', meta, 'metadata', new, 'updated_at', updated)
if sessions then change_sets(session_id, entries, '', true, updated, ttl) end
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
return {'ok', state[4], updated, version, state[5] or ''}
""",
    prefix=SESSION,
    args=('seen', 'new', 'entries'),
)

# Removes the messages, their records and the summary, which covers messages that are gone.
# 'ok', updated_at, version; or 'gone', 'stale'.
CLEAR = Script(
    'clear',
    """
local state = redis.call('HMGET', meta, 'version', 'updated_at')
if not state[1] then return {'gone'} end
local answer = stale(state[1])
if answer then return answer end
redis.call('DEL', msgs, counts, summary)
redis.call('HDEL', meta, 'gaps')
local updated = later(state[2], now)
redis.call('HSET', meta, 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
notify('cleared')
return {'ok', updated, version}
""",
    prefix=SESSION,
)

# 'ok', 'gone' or 'stale' <current version>.
DELETE = Script(
    'delete',
    INDEX,
    NOTIFY,
    """
local version = redis.call('HGET', meta, 'version')
if not version then return {'gone'} end
if expected ~= '' and expected ~= '*' and expected ~= version then return {'stale', version} end
redis.call('DEL', meta, msgs, counts, summary)
if sessions then unindex(session_id) end
notify('deleted')
return {'ok'}
""",
    keys=('meta', 'msgs', 'counts', 'summary', 'sessions?'),
    args=('session_id', 'expected'),
)

# DELETE without a version check, and with the session's idempotency records, named in `idems` (which a DELETE
# keeps, so that a retry replays its first answer): what an erasure does to each session. The records go first,
# also when the session is gone, so that a repeated erasure finishes what a failed one left. 'ok' or 'gone'.
ERASE = Script(
    'erase',
    INDEX,
    NOTIFY,
    """
local names = redis.call('SMEMBERS', idems)
for from = 1, #names, 1000 do redis.call('DEL', unpack(names, from, math.min(from + 999, #names))) end
redis.call('DEL', idems)
if redis.call('EXISTS', meta) == 0 then return {'gone'} end
redis.call('DEL', meta, msgs, counts, summary)
if sessions then unindex(session_id) end
notify('deleted')
return {'ok'}
""",
    keys=('meta', 'msgs', 'counts', 'summary', 'idems', 'sessions?'),
    args=('session_id',),
)

# `limit`, `before`, `after`: '' = not given. Same arithmetic as the memory store. Returns the messages
# (false: no session), not joined into one JSON array: building that string costs redis-server more CPU
# than joining the replies costs memsvc.
RANGE = """
-- The positions lo to hi - 1 in `msgs` that `limit`, `before` and `after` select, and how many are held;
-- nil when there is no session.
local function range()
  local state = redis.call('HMGET', meta, 'next_id', 'gaps')
  if not state[1] then return nil end
  local next_id, count = tonumber(state[1]), redis.call('LLEN', msgs)
  local limit_, before_, after_ = tonumber(limit), tonumber(before), tonumber(after)
  local lo, hi = 0, count
  if state[2] then
    local list = gaps_of(state[2])
    local first = next_id - count - missing(list)
    if after_ then lo = stored_below(list, first, next_id, after_ + 1) end
    if before_ then hi = stored_below(list, first, next_id, before_) end
  else
    local first = next_id - count
    if after_ then lo = math.min(math.max(after_ + 1 - first, 0), count) end
    if before_ then hi = math.min(math.max(before_ - first, 0), count) end
  end
  if limit_ and hi - lo > limit_ then
    if after_ then hi = lo + limit_ else lo = hi - limit_ end
  end
  return lo, hi, count
end
"""

GET_MESSAGES = Script(
    'get_messages',
    GAPS,
    RANGE,
    """
local lo, hi = range()
if not lo then return false end
if lo >= hi then return {} end  -- (LRANGE 0 -1 would be all of them)
return redis.call('LRANGE', msgs, lo, hi - 1)
""",
    keys=('meta', 'msgs'),
    args=('limit', 'before', 'after'),
)

# As GET_MESSAGES, with the records: {held, messages, records}, the records of the last messages only when the
# first ones have none (stored before records were; the caller counts those); false: no session.
GET_COUNTED = Script(
    'get_counted',
    GAPS,
    RANGE,
    """
local lo, hi, held = range()
if not lo then return false end
if lo >= hi then return {held, {}, {}} end
local offset = held - redis.call('LLEN', counts)
local records = {}
if hi - 1 >= offset then records = redis.call('LRANGE', counts, math.max(lo - offset, 0), hi - 1 - offset) end
return {held, redis.call('LRANGE', msgs, lo, hi - 1), records}
""",
    keys=('meta', 'msgs', 'counts'),
    args=('limit', 'before', 'after'),
)

# `text` is the summary as the API answers it; `through_id` must be a stored message's id.
# 'ok', updated_at, version; or 'gone', 'stale', 'unknown' (no such message). The recorded result: the version,
# then the summary, on two lines.
SET_SUMMARY = Script(
    'set_summary',
    GAPS,
    """
local answer = recorded()
if answer then return answer end
local state = redis.call('HMGET', meta, 'next_id', 'updated_at', 'version', 'gaps')
if not state[1] then return {'gone'} end
answer = stale(state[3])
if answer then return answer end
local through, next_id, list = tonumber(through_id), tonumber(state[1]), gaps_of(state[4])
if not holds(list, next_id - redis.call('LLEN', msgs) - missing(list), next_id, through) then return {'unknown'} end
redis.call('SET', summary, text)
local updated = later(state[2], now)
redis.call('HSET', meta, 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
record(version .. '\\n' .. text)
return {'ok', updated, version}
""",
    prefix=SESSION,
    args=('text', 'through_id'),
)

# 'ok', updated_at, version; or 'gone', 'stale', 'none' (no summary). The recorded result: the version.
DELETE_SUMMARY = Script(
    'delete_summary',
    """
local answer = recorded()
if answer then return answer end
local state = redis.call('HMGET', meta, 'updated_at', 'version')
if not state[1] then return {'gone'} end
answer = stale(state[2])
if answer then return answer end
if redis.call('DEL', summary) == 0 then return {'none'} end
local updated = later(state[1], now)
redis.call('HSET', meta, 'updated_at', updated)
local version = redis.call('HINCRBY', meta, 'version', 1)
refresh(updated)
record(tostring(version))
return {'ok', updated, version}
""",
    prefix=SESSION,
)

# The bump every message edit ends with: 'ok', then `extra`, updated_at, version.
BUMP = """
local function bumped(state_updated, extra)
  local updated = later(state_updated, now)
  redis.call('HSET', meta, 'updated_at', updated)
  local version = redis.call('HINCRBY', meta, 'version', 1)
  refresh(updated)
  if extra then return {'ok', extra, updated, version} end
  return {'ok', updated, version}
end
"""

# Removes the message `message_id` and its record from the lists (LSET to a byte no message or record is, then
# LREM of it from the nearer end: O(distance to that end)) and notes its id in the gaps. The summary stays.
# 'ok', updated_at, version; or 'gone', 'stale', 'unknown' (no such message).
DELETE_MESSAGE = Script(
    'delete_message',
    GAPS,
    BUMP,
    """
local state = redis.call('HMGET', meta, 'next_id', 'updated_at', 'version', 'gaps')
if not state[1] then return {'gone'} end
local answer = stale(state[3])
if answer then return answer end
local next_id, x, list = tonumber(state[1]), tonumber(message_id), gaps_of(state[4])
local held = redis.call('LLEN', msgs)
local first = next_id - held - missing(list)
if not holds(list, first, next_id, x) then return {'unknown'} end
local function remove(key, position, length)
  redis.call('LSET', key, position, '\\0')
  redis.call('LREM', key, position < length / 2 and 1 or -1, '\\0')
end
local position = stored_below(list, first, next_id, x)
local records = redis.call('LLEN', counts)
remove(msgs, position, held)
if position >= held - records then remove(counts, position - (held - records), records) end
if x == first then  -- the next stored message becomes the first: a gap right after it is no gap any more
  if list[1] and list[1][1] == x + 1 then table.remove(list, 1) end
else
  local merged, start, stop = {}, x, x + 1
  for _, gap in ipairs(list) do
    if gap[2] == start then start = gap[1] elseif gap[1] == stop then stop = gap[2] else merged[#merged + 1] = gap end
  end
  merged[#merged + 1] = {start, stop}
  table.sort(merged, function(a, b) return a[1] < b[1] end)
  list = merged
end
save_gaps(list)
notify('message_deleted', message_id)
return bumped(state[2])
""",
    prefix=SESSION,
    args=('message_id',),
)

# Removes every message above `after` with its record; the gap up to next_id keeps ids from being given again. The
# summary goes if it covers a removed message (through_id > after). 'ok', how many went, updated_at, version; or
# 'gone', 'stale'.
TRUNCATE = Script(
    'truncate',
    GAPS,
    BUMP,
    """
local state = redis.call('HMGET', meta, 'next_id', 'updated_at', 'version', 'gaps')
if not state[1] then return {'gone'} end
local answer = stale(state[3])
if answer then return answer end
local next_id, cut, list = tonumber(state[1]), tonumber(after), gaps_of(state[4])
local held = redis.call('LLEN', msgs)
local keep = stored_below(list, next_id - held - missing(list), next_id, cut + 1)
local kept = {}
if keep == 0 then
  redis.call('DEL', msgs, counts)
else
  if keep < held then
    local records = redis.call('LLEN', counts) - (held - keep)
    redis.call('LTRIM', msgs, 0, keep - 1)
    if records > 0 then redis.call('LTRIM', counts, 0, records - 1) else redis.call('DEL', counts) end
  end
  for _, gap in ipairs(list) do
    if gap[1] <= cut then kept[#kept + 1] = {gap[1], math.min(gap[2], cut + 1)} end
  end
  if cut + 1 < next_id then
    local last = kept[#kept]
    if last and last[2] == cut + 1 then last[2] = next_id else kept[#kept + 1] = {cut + 1, next_id} end
  end
end
save_gaps(kept)
local text = redis.call('GET', summary)
if text and tonumber(cjson.decode(text)['through_id']) > cut then redis.call('DEL', summary) end
notify('truncated', after)
return bumped(state[2], held - keep)
""",
    prefix=SESSION,
    args=('after',),
)
