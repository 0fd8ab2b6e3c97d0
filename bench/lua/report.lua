-- Shared by every script here: thread bookkeeping, the answer check and the JSON report.
--
-- Environment (read in every Lua state wrk makes):
--   BENCH_DATA     the file of pre-built requests (one per line)
--   BENCH_THREADS  wrk's -t, so that each thread takes every BENCH_THREADS-th line
--   BENCH_EXPECT   a substring every good answer to a measured request contains
--   BENCH_OUT      where done() writes the JSON report
--   BENCH_REFUSED  optional: substrings ("|"-separated) of a 4xx answer that is an expected
--                  refusal (racing refunds: "would exceed"), counted apart, not as an error
--
-- A script that times whole flows (several requests each) appends milliseconds to the
-- global table flow_ms; done() reports their percentiles as flow_p50_ms and so on.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")

-- Monotonic wall-clock milliseconds (wrk's Lua has no clock of its own but os.clock's
-- CPU time).
function now_ms()
   ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
   return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local refusals = {}
for mark in (os.getenv("BENCH_REFUSED") or ""):gmatch("[^|]+") do
   refusals[#refusals + 1] = mark
end

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- This thread's share of the file: lines id+1, id+1+n, id+1+2n, ...
function load_lines(id)
   local n = tonumber(os.getenv("BENCH_THREADS"))
   local lines = {}
   local i = 0
   for line in io.lines(os.getenv("BENCH_DATA")) do
      if i % n == id then
         lines[#lines + 1] = line
      end
      i = i + 1
   end
   return lines
end

function split_tabs(line)
   local fields = {}
   for field in (line .. "\t"):gmatch("([^\t]*)\t") do
      fields[#fields + 1] = field
   end
   return fields
end

local function num(thread, name)
   return tonumber(thread:get(name)) or 0
end

local function percentile(sorted, p)
   if #sorted == 0 then return 0 end
   return sorted[math.max(1, math.ceil(#sorted * p / 100))]
end

function done(summary, latency, requests)
   local ok, bad, exhausted, http_error, refused = 0, 0, 0, 0, 0
   local first_bad = ""
   local flows = {}
   for _, thread in ipairs(threads) do
      ok = ok + num(thread, "ok")
      refused = refused + num(thread, "refused")
      for _, ms in ipairs(thread:get("flow_ms") or {}) do flows[#flows + 1] = ms end
      bad = bad + num(thread, "bad")
      http_error = http_error + num(thread, "http_error")
      exhausted = exhausted + num(thread, "exhausted")
      local sample = thread:get("first_bad")
      if first_bad == "" and sample then first_bad = sample:gsub('[%c"\\]', " ") end
   end
   table.sort(flows)
   local e = summary.errors
   local out = io.open(os.getenv("BENCH_OUT"), "w")
   out:write(string.format(
      '{"duration_s": %.6f, "requests": %d, "ok": %d, "bad": %d, "http_error": %d, ' ..
      '"exhausted_threads": %d, "threads": %d, ' ..
      '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
      '"status_errors": %d, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, ' ..
      '"mean_ms": %.3f, "max_ms": %.3f, "first_bad": "%s", "refused": %d, ' ..
      '"flows": %d, "flow_p50_ms": %.3f, "flow_p95_ms": %.3f, "flow_p99_ms": %.3f, ' ..
      '"flow_max_ms": %.3f}\n',
      summary.duration / 1e6, summary.requests, ok, bad, http_error, exhausted, #threads,
      e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50) / 1000, latency:percentile(95) / 1000,
      latency:percentile(99) / 1000, latency.mean / 1000, latency.max / 1000,
      first_bad, refused, #flows, percentile(flows, 50), percentile(flows, 95),
      percentile(flows, 99), flows[#flows] or 0))
   out:close()
end

-- Counts one answer; keeps the first bad one (status and start of body) for the report.
function judge(status, body, expect)
   if status >= 200 and status < 300 and body and body:find(expect, 1, true) then
      ok = ok + 1
      return true
   end
   if status >= 400 and status < 500 and body then
      for _, mark in ipairs(refusals) do
         if body:find(mark, 1, true) then
            refused = (refused or 0) + 1
            return false
         end
      end
   end
   bad = bad + 1
   if status < 200 or status >= 300 then http_error = http_error + 1 end
   if first_bad == nil then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 300)
   end
   return false
end
