-- POST a user + assistant pair (one JSON array, appended atomically) to each session in turn, as a
-- gateway does after every turn (args: prefix=, sessions=).
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

local BODY = '[{"role":"user","content":"Can you summarise the three main points of the report I sent this '
  .. 'morning, and list the deadlines it mentions?"},'
  .. '{"role":"assistant","content":"Here are the three main points: first, revenue grew by twelve percent '
  .. 'while costs stayed flat; second, the new product line ships in the spring; third, hiring is paused '
  .. 'until the audit is complete. Deadlines: the budget review on March 3, the launch plan on March 17, '
  .. 'and the audit report at the end of April."}]'

function init(args)
  local opts = bench.options(args)
  bench.prepare(opts, function(session)
    return wrk.format('POST', opts.api .. '/sessions/' .. session .. '/messages', bench.json, BODY)
  end)
end

request = bench.request
done = bench.done
