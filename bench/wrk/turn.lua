-- A gateway's turn, as `memsvc.client` makes it (bench/client.py): GET the last 20 messages of a session, then
-- POST the user + assistant pair with an Idempotency-Key of its own (args: prefix=, sessions=). wrk gives no
-- per-connection state, so the requests alternate across the connections: the same mix, half reads, half
-- keyed appends.
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

local BODY = bench.PAIR

local reads, paths, sessions, turn, tag = {}, {}, 0, 0, ''

function init(args)
  local opts = bench.options(args)
  sessions = opts.sessions
  tag = string.format('%x%x', os.time(), math.random(0, 0xffffff))
  for n = 1, sessions do
    local path = opts.api .. '/sessions/' .. opts.prefix .. '-' .. n .. '/messages'
    reads[n] = wrk.format('GET', path .. '?limit=20')
    paths[n] = path
  end
end

function request()
  turn = turn + 1
  local n = math.floor(turn / 2) % sessions + 1
  if turn % 2 == 1 then
    return reads[n]
  end
  local headers = { ['Content-Type'] = 'application/json', ['Idempotency-Key'] = tag .. '-' .. turn }
  return wrk.format('POST', paths[n], headers, BODY)
end

done = bench.done
