-- wrk script for sekisho's benchmark (bench/run.sh).
--
-- Sends one fixed request over keep-alive connections. For a forward proxy the
-- request target is absolute-form, e.g.
--   GET http://127.0.0.1:ORIGIN/small HTTP/1.1
--   Host: 127.0.0.1:ORIGIN
-- which is what wrk.format("GET", "http://127.0.0.1:ORIGIN/small") produces
-- once the Host header names the origin.
--
-- Environment:
--   BENCH_TARGET  request target (absolute URL for a proxy, "/small" for direct)
--   BENCH_HOST    value of the Host header (defaults to wrk's: the URL given to wrk)
--
-- Setting wrk.method/path/headers (and not defining request()) lets wrk build
-- the request once, so the load generator spends no Lua time per request.

local target = os.getenv("BENCH_TARGET")
if target == nil or target == "" then
  error("BENCH_TARGET is not set")
end
local host = os.getenv("BENCH_HOST")

wrk.method = "GET"
wrk.path = target
if host ~= nil and host ~= "" then
  wrk.headers["Host"] = host
end

-- One machine-readable line for run.sh; wrk's own report is printed as usual.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d rps=%.2f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
