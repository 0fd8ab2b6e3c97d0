-- replay.lua at a fixed rate: BENCH_RATE requests per second over all threads, each
-- thread sending its share on a fixed schedule (request k of a thread is due k / rate
-- after its start). wrk's delay() holds a connection until its next request is due; a
-- request whose slot has passed goes at once. When the server is slower than the rate,
-- every connection stays busy and the achieved rate (reported by the harness next to
-- the target) falls below it: use enough connections (-c) for rate x latency.

dofile(os.getenv("BENCH_LUA_DIR") .. "/replay.lua")

local interval = 1000 * tonumber(os.getenv("BENCH_THREADS")) / tonumber(os.getenv("BENCH_RATE"))
local start, slot

function delay()
   local now = now_ms()
   start = start or now
   slot = (slot or -1) + 1
   return math.max(0, math.floor(start + slot * interval - now))
end
