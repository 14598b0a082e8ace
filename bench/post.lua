-- wrk script for bench/run.py: POST one small chat completion, print a JSON summary line at the end.
-- BENCH_BODY overrides the request body. BENCH_UNIQUE=1 makes every request's prompt distinct (a
-- nonce of this wrk run, from BENCH_NONCE, and a counter after the first "content" text), so a cache
-- can only miss and store, in this run and across runs.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client"
wrk.body = os.getenv("BENCH_BODY")
  or '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'

local unique = os.getenv("BENCH_UNIQUE") == "1"
local head, tail = string.match(wrk.body, '^(.-"content"%s*:%s*")(.*)$')
local counter = 0
local nonce = os.getenv("BENCH_NONCE") or tostring(os.time())

if unique and head then
  request = function()
    counter = counter + 1
    return wrk.format(nil, nil, nil, head .. nonce .. "-" .. counter .. " " .. tail)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, '
      .. '"mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
