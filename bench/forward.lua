-- wrk script for sekisho's benchmarks (bench/run.sh, bench/reverse.sh).
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
-- BENCH_CLOSE=1: one request per connection (new TLS handshakes in bench/reverse.sh)
if os.getenv("BENCH_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

-- BENCH_AUTH (optional): prefix of files written by bench/digest_auth.py; each
-- thread sends Proxy-Authorization: Digest with its own nonce and the next
-- precomputed nonce count and response. Only then is request() defined, so
-- the plain runs keep wrk's prebuilt request.
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  local next_id = 1
  function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
  end

  local nonce, counts, responses, i = nil, {}, {}, 0
  function init(args)
    local f = assert(io.open(auth .. "." .. id, "r"))
    nonce = f:read("*l")
    for line in f:lines() do
      local nc, resp = line:match("^(%x+) (%x+)$")
      counts[#counts + 1] = nc
      responses[#responses + 1] = resp
    end
    f:close()
  end

  -- the request is built by hand (one concatenation): wrk.format per request
  -- would make the load generator, not the proxy, the bottleneck
  local head = "GET " .. target .. " HTTP/1.1\r\nHost: " .. (host or "") ..
    '\r\nProxy-Authorization: Digest username="bench", realm="bench", uri="' .. target ..
    '", algorithm=SHA-256, qop=auth, cnonce="bench", nonce="'
  function request()
    i = i + 1
    if i > #counts then i = 1 end -- replays from here on: the proxy answers 407 (counted)
    return head .. nonce .. '", nc=' .. counts[i] .. ', response="' .. responses[i] .. '"\r\n\r\n'
  end
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
