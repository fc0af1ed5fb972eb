-- POST a user + assistant pair (one JSON array, appended atomically) to each session in turn, as a
-- gateway does after every turn (args: prefix=, sessions=).
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

local BODY = bench.PAIR

function init(args)
  local opts = bench.options(args)
  bench.prepare(opts, function(session)
    return wrk.format('POST', opts.api .. '/sessions/' .. session .. '/messages', bench.json, BODY)
  end)
end

request = bench.request
done = bench.done
