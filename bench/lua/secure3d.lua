-- The 3-D Secure flow, as a shop's server and the cardholder's browser drive it:
--   1. POST /payment/cryptopay (pre-issued invoice-bound token, a 3-D Secure card):
--      the answer carries secure3D {action, paReq, md} and the transaction id;
--   2. POST action (the simulator's ACS page) with PaReq, MD, TermUrl: the page shows
--      the one-time code (sandbox);
--   3. POST /acs/pa/answer with the code: the auto-posting form carries PaRes and MD;
--   4. POST /payment/confirm {ID, PaRes, MD} with the token: "code":0, status AUTH.
--
-- A line is: BEARER-TOKEN \t CRYPTOPAY-JSON-BODY. Run with one connection per thread
-- (wrk -t N -c N) so that each answer belongs to the step that asked. "ok" counts
-- completed payments; each one's time from step 1 to the answer of step 4 goes to
-- flow_ms. A step that fails counts one error and the payment is abandoned.

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local TERM_URL = "https://shop.example/3ds-result"
local lines, index, step, spare, started
local tx_id, pa_req, md, acs_path, code, pa_res

local function urlencode(text)
   return (text:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function unescape(text)
   return (text:gsub("&#(%d+);", function(n) return string.char(tonumber(n)) end)
      :gsub("&quot;", '"'):gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&amp;", "&"))
end

local FORM = {["Content-Type"] = "application/x-www-form-urlencoded"}

function init(args)
   lines = load_lines(id)
   index = 1
   step = 1
   flow_ms = {}
   ok, bad, http_error, exhausted, refused = 0, 0, 0, 0, 0
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
   if step == 1 then
      started = started or now_ms()
      return wrk.format("POST", "/payment/cryptopay",
         {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. f[1]}, f[2])
   end
   local form = "PaReq=" .. urlencode(pa_req) .. "&MD=" .. urlencode(md) ..
      "&TermUrl=" .. urlencode(TERM_URL)
   if step == 2 then
      return wrk.format("POST", acs_path, FORM, form)
   end
   if step == 3 then
      return wrk.format("POST", "/acs/pa/answer", FORM, form .. "&action=confirm&code=" .. code)
   end
   return wrk.format("POST", "/payment/confirm",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. f[1]},
      '{"ID":"' .. tx_id .. '","PaRes":"' .. pa_res .. '","MD":"' .. md .. '"}')
end

local function next_payment()
   step = 1
   started = nil
   index = index + 1
end

-- The step's answer as the next step needs it, or nil when the step failed.
local function understood(status, body)
   if status ~= 200 or body == nil then return nil end
   if step == 1 then
      tx_id = body:match('^{"id":"([^"]+)"')
      local action = body:match('"action":"([^"]+)"')
      pa_req = body:match('"paReq":"([^"]+)"')
      md = body:match('"md":"([^"]+)"')
      acs_path = action and (action:match("^https?://[^/]+(/.*)$") or action)
      return tx_id and pa_req and md and acs_path
   end
   if step == 2 then
      code = body:match('id="sandbox%-code">(%d%d%d%d%d%d)<')
      return code
   end
   local value = body:match('name="PaRes" value="([^"]*)"')
   pa_res = value and unescape(value)
   return pa_res and body:find('name="MD" value="' .. md .. '"', 1, true)
end

function response(status, headers, body)
   if exhausted ~= 0 then return end
   if step == 4 then
      if judge(status, body, '"status":"AUTH"') then
         flow_ms[#flow_ms + 1] = now_ms() - started
      end
      next_payment()
   elseif understood(status, body) then
      step = step + 1
   else
      judge(status, body, "a 3-D Secure step") -- counts the failure, keeps the first
      next_payment()
   end
end
