-- GET a path for each session in turn (args: path=, with `{id}` standing for the session id; prefix=,
-- sessions=). E.g. path=/sessions/{id}/messages?limit=20.
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

function init(args)
  local opts = bench.options(args)
  if not opts.path:find('{id}', 1, true) then opts.sessions = 1 end
  bench.prepare(opts, function(session)
    local path = opts.path:gsub('{id}', session)
    return wrk.format('GET', opts.api .. path)
  end)
end

request = bench.request
done = bench.done
