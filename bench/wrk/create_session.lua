-- POST /sessions with metadata and no id: every request creates a new session (uuid4).
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

local BODY = '{"metadata":{"user_id":"u-1234","source":"web","model":"gpt-4o"}}'

function init(args)
  local opts = bench.options(args)
  opts.sessions = 1
  bench.prepare(opts, function(_)
    return wrk.format('POST', opts.api .. '/sessions', bench.json, BODY)
  end)
end

request = bench.request
done = bench.done
