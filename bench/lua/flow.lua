-- The merchant flow: for every pre-built payment, POST /oauth2/token for its invoice,
-- then POST /payment/cryptopay with the token that came back.
--
-- A line is: TOKEN-FORM-BODY \t CRYPTOPAY-JSON-BODY. Run with as many threads as
-- connections (wrk -t N -c N): one connection per thread keeps the order of requests
-- and answers exact, so each token goes with its own invoice. "ok" counts payments.
-- If request() is called again before an answer (wrk's first check of the script, a
-- reconnect) it sends the same request again.

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local lines, index, phase, token, expect, spare, tokens_bad

function init(args)
   lines = load_lines(id)
   index = 1
   phase = "token"
   ok, bad, http_error, exhausted, refused = 0, 0, 0, 0, 0
   expect = os.getenv("BENCH_EXPECT")
   spare = wrk.format("GET", "/public.rsa")
end

function request()
   local line = lines[index]
   if line == nil then
      if exhausted == 0 then
         exhausted = 1
         wrk.thread:stop()
      end
      return spare
   end
   local f = split_tabs(line)
   if phase == "token" then
      return wrk.format("POST", "/oauth2/token",
         {["Content-Type"] = "application/x-www-form-urlencoded"}, f[1])
   end
   return wrk.format("POST", "/payment/cryptopay",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, f[2])
end

function response(status, headers, body)
   if exhausted ~= 0 then return end
   if phase == "token" then
      token = status == 200 and body:match('"access_token":"([^"]+)"')
      if token then
         phase = "pay"
      else
         judge(status, body, "access_token") -- counts the failure
         index = index + 1
      end
      return
   end
   judge(status, body, expect)
   phase = "token"
   index = index + 1
end
