-- Shared by the wrk scripts of `python -m bench`: options, a rotation of prebuilt requests over the
-- sessions, and a one-line JSON summary that the runner reads.
--
-- wrk gives a script no per-connection hook, so each thread builds one request per session up front
-- and hands them out in turn: with `sessions` equal to the connection count, every session is written
-- by about one connection at a time, as a gateway's conversations are. Building the requests in
-- `init` keeps wrk's own cost per request at a table lookup.
local M = {}

-- `key=value` words after `--` on wrk's command line.
function M.options(args)
  local opts = { api = '/api/v1/chat', prefix = 's', sessions = '64' }
  for _, word in ipairs(args) do
    local key, value = word:match('^([%w_]+)=(.*)$')
    if key then opts[key] = value end
  end
  opts.sessions = tonumber(opts.sessions)
  return opts
end

M.json = { ['Content-Type'] = 'application/json' }

-- A gateway's user + assistant pair, as one JSON array (append_pair.lua, turn.lua).
M.PAIR = '[{"role":"user","content":"Can you summarise the three main points of the report I sent this '
  .. 'morning, and list the deadlines it mentions?"},'
  .. '{"role":"assistant","content":"Here are the three main points: first, revenue grew by twelve percent '
  .. 'while costs stayed flat; second, the new product line ships in the spring; third, hiring is paused '
  .. 'until the audit is complete. Deadlines: the budget review on March 3, the launch plan on March 17, '
  .. 'and the audit report at the end of April."}]'

local requests, count, next_one = {}, 0, 0

-- Build `build(session_id)` for every session of this thread.
function M.prepare(opts, build)
  for n = 1, opts.sessions do
    requests[n] = build(opts.prefix .. '-' .. n)
  end
  count = opts.sessions
end

function M.request()
  next_one = next_one % count + 1
  return requests[next_one]
end

-- One line for the runner: throughput, latency percentiles (µs) and every kind of error.
function M.done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, errors.connect, errors.read, errors.write, errors.timeout, errors.status
  ))
end

return M
