-- POST one user message to each session in turn (args: prefix=, sessions=).
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

local BODY = '{"role":"user","content":"Can you summarise the three main points of the report I sent this '
  .. 'morning, and list the deadlines it mentions?"}'

function init(args)
  local opts = bench.options(args)
  bench.prepare(opts, function(session)
    return wrk.format('POST', opts.api .. '/sessions/' .. session .. '/messages', bench.json, BODY)
  end)
end

request = bench.request
done = bench.done
