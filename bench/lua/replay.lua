-- Sends every pre-built request of BENCH_DATA exactly once, each thread its own share.
--
-- A line is: METHOD \t PATH \t BEARER-TOKEN-or-empty \t CONTENT-TYPE-or-empty \t BODY.
-- When a thread's share runs out it stops (the run then ends early; wrk's rate is over
-- the real elapsed time and the report counts the exhausted threads).
-- See report.lua for the environment.

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local lines, index, expect, spare

function init(args)
   lines = load_lines(id)
   index = 0
   ok, bad, http_error, exhausted, refused = 0, 0, 0, 0, 0
   expect = os.getenv("BENCH_EXPECT")
   spare = wrk.format("GET", os.getenv("BENCH_SPARE") or "/")
end

function request()
   index = index + 1
   local line = lines[index]
   if line == nil then
      if exhausted == 0 then
         exhausted = 1
         wrk.thread:stop()
      end
      return spare
   end
   local f = split_tabs(line)
   local headers = {}
   if f[3] ~= "" then headers["Authorization"] = "Bearer " .. f[3] end
   if f[4] ~= "" then headers["Content-Type"] = f[4] end
   local body = nil
   if f[5] ~= "" then body = f[5] end
   return wrk.format(f[1], f[2], headers, body)
end

function response(status, headers, body)
   if exhausted == 0 then judge(status, body, expect) end
end
