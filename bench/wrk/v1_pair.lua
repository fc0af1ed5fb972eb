-- POST a user + assistant pair to OpenAI's Conversations API (`/v1/conversations/{id}/items`), as the Agents SDK
-- writes a turn: the user's text a string, the answer as output_text (args: prefix=, sessions=; the sessions must
-- exist: items create never creates a conversation).
local bench = dofile((debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. 'common.lua')

local BODY = '{"items":[{"role":"user","content":"Can you summarise the three main points of the report I sent '
  .. 'this morning, and list the deadlines it mentions?"},'
  .. '{"type":"message","role":"assistant","status":"completed","content":[{"type":"output_text","annotations":[],'
  .. '"text":"Here are the three main points: first, revenue grew by twelve percent '
  .. 'while costs stayed flat; second, the new product line ships in the spring; third, hiring is paused '
  .. 'until the audit is complete. Deadlines: the budget review on March 3, the launch plan on March 17, '
  .. 'and the audit report at the end of April."}]}]}'

function init(args)
  local opts = bench.options(args)
  bench.prepare(opts, function(session)
    return wrk.format('POST', '/v1/conversations/' .. session .. '/items', bench.json, BODY)
  end)
end

request = bench.request
done = bench.done
